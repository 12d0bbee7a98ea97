"""The simulated Luna Network HSM 7 appliances (see tests/sim/README.md, "Appliances").

model/roles/policies: the appliance state and its rules (no I/O); paths: where
its files live; softhsm/p11: partitions as SoftHSM2 tokens; device: one running
appliance (listeners, sessions, reboots, faults); sshd/terminal/shell/cli and
cmd_*: LunaSH over SSH; sftp/scp: files in the admin's home; ntls: the TLS
listener; pool: seeding and ARM binding; control: the /_sim/appliances routes;
service: the estate service that runs them all.
"""
