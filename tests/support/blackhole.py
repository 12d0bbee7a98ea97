#!/usr/bin/python3
"""A port where connections time out without leaving the machine.

Listens with a backlog of 0 and fills it with its own connections, so the
kernel drops further SYNs: a client's connect() waits until its timeout.
Prints the port, then holds until stdin closes.
"""
import socket
import sys

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(0)
port = listener.getsockname()[1]
fillers = []
for _ in range(8):                  # more than the backlog can hold
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    fillers.append(s)
print(port, flush=True)
sys.stdin.read()
