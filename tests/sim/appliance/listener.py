"""Loopback TCP listeners that can be open, refuse connections, or drop them silently.

  open       accept and hand each connection to a handler thread
  refuse     the port is bound but not listening: connect() gets ECONNREFUSED
  blackhole  listen(0) with the accept queue filled by two idle sockets of our own,
             so the kernel drops new SYNs and connect() times out - what a powered-off
             or unreachable appliance looks like through ExpressRoute
Keeping the port bound in every mode stops another process from taking it.

GatedSocket sits between paramiko and a TCP connection so that a session can be
frozen (the network path is gone: nothing in, nothing out, no FIN) or reset (RST).
"""
import logging
import os
import select
import socket
import struct
import threading

log = logging.getLogger("estate.appliance")
MODES = ("open", "refuse", "blackhole")


def _socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # SO_REUSEPORT lets a mode change bind the replacement socket before closing the old
    # one: a port left free for an instant can be taken as someone's ephemeral port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _bind(port):
    """A socket on PORT if it is free (ports survive restarts), else on a new port."""
    sock = _socket()
    try:
        sock.bind(("127.0.0.1", port or 0))
    except OSError:
        if not port:
            raise
        sock.close()
        sock = _socket()
        sock.bind(("127.0.0.1", 0))  # the old port is taken: a new one, written to estate.json
    return sock


def reset(sock):
    """Close with a TCP RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class Listener:
    """Mode changes are carried out by the accept thread itself, between two select()
    calls: a socket closed while another thread sits in select()/accept() on it stays
    alive (and keeps accepting) until that call returns."""

    def __init__(self, name, port, handler):
        self.name, self.handler = name, handler
        self._cond = threading.Condition()
        self._sock = _bind(port)
        self.port = self._sock.getsockname()[1]
        self._fillers = []
        self.mode = self._wanted = "refuse"
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name=f"listen-{name}", daemon=True)
        self._thread.start()

    def set_mode(self, mode):
        """Switch to MODE and return once it is in force."""
        with self._cond:
            if self._closed:
                return
            self._wanted = mode
            os.write(self._wake_w, b"!")
            self._cond.wait_for(lambda: self.mode == mode or self._closed, timeout=5)

    def close(self):
        with self._cond:
            self._closed = True
            os.write(self._wake_w, b"!")
        self._thread.join(5)

    def _switch(self, mode):
        """Bind a fresh socket to the port, then close the old one (SO_REUSEPORT)."""
        fresh = _socket()
        fresh.bind(("127.0.0.1", self.port))
        self._drop_sockets()
        self._sock = fresh
        if mode == "open":
            fresh.listen(64)
        elif mode == "blackhole":
            fresh.listen(0)
            self._fill_queue()
        self.mode = mode

    def _drop_sockets(self):
        for filler in self._fillers:
            filler.close()
        self._fillers = []
        self._sock.close()

    def _fill_queue(self):
        for _ in range(2):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self._fillers.append(filler)

    def _loop(self):
        while True:
            with self._cond:
                if self._closed:
                    self._drop_sockets()
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._cond.notify_all()
                    return
                if self._wanted != self.mode:
                    self._switch(self._wanted)
                    self._cond.notify_all()
                sock, accepting = self._sock, self.mode == "open"
            ready, _, _ = select.select([self._wake_r] + ([sock] if accepting else []), [], [], 1.0)
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if sock in ready:
                self._accept(sock)

    def _accept(self, sock):
        try:
            conn, addr = sock.accept()
        except OSError:
            return
        threading.Thread(target=self._serve, args=(conn, addr), daemon=True, name=f"{self.name}-{addr[1]}").start()

    def _serve(self, conn, addr):
        try:
            self.handler(conn, addr)
        except Exception:
            log.exception("%s: connection from %s failed", self.name, addr)


class GatedSocket:
    """A socket paramiko talks through; freeze() makes the path silent in both directions."""

    def __init__(self, sock):
        self._sock = sock
        self.frozen = False

    def recv(self, size):
        data = self._sock.recv(size)
        if self.frozen and data:
            raise socket.timeout()  # swallowed: paramiko treats a timeout as "nothing yet"
        return data

    def send(self, data):
        if self.frozen:
            return len(data)  # lost on the way, as on a cut link
        return self._sock.send(data)

    def sendall(self, data):
        if not self.frozen:
            self._sock.sendall(data)

    def freeze(self):
        self.frozen = True

    def reset(self):
        reset(self._sock)

    def __getattr__(self, name):
        return getattr(self._sock, name)
