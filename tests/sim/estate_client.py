"""Talking to a running estate: used by the `estate` tool, bin/az and the self-test."""
import http.client
import json
import os
import ssl
import urllib.parse

from fsutil import read_json

ESTATE_FILE = "estate.json"


class EstateError(Exception):
    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code  # the control endpoint's error code, when it answered one


class EstateClient:
    def __init__(self, estate_dir):
        self.dir = os.path.abspath(estate_dir)
        self.info = read_json(os.path.join(self.dir, ESTATE_FILE))
        if self.info is None:
            raise EstateError(f"no estate in {self.dir} (estate.json missing: run 'estate start --dir {self.dir}')")
        self.ssl = ssl.create_default_context(cafile=self.info["ca_file"])

    def http(self, method, url, body=None, headers=None, timeout=10):
        """One request on a fresh connection -> (status, headers dict, raw body)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=self.ssl, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        try:
            conn.request(method, parts.path + ("?" + parts.query if parts.query else ""), body=data,
                         headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except OSError as e:
            raise EstateError(f"cannot reach {parts.scheme}://{parts.netloc}: {e}")
        finally:
            conn.close()

    def control(self, method, path, body=None):
        ctl = self.info["control"]
        status, _, raw = self.http(method, ctl["url"] + "/" + path.lstrip("/"), body,
                                   {ctl["header"]: ctl["token"]})
        doc = json.loads(raw) if raw else None
        if status >= 400:
            error = (doc or {}).get("error", {})
            raise EstateError(error.get("message", raw.decode(errors="replace")), error.get("code"))
        return doc
