"""The simulated Luna client host (see tests/sim/README.md, "Client tools").

install/conf/certs: the install in DIR/client and its Chrystoki.conf; ntls_link/slots: the
client end of NTLS and how slots are numbered; ha: HA groups and their member rules;
estate_view: what the tools read from the estate; service/ready: the estate daemon's part
(the install, HA member state, `--client-ready`); vtl, lunacm/: the two stand-ins
(executables in tests/sim/bin); cryptoki/: the client's PKCS#11 library, whose partition
logins report_login.py reports to the appliances.
"""
