"""The `lunacm` stand-in (luna.md section 5): a Luna client's management shell on the simulated client.

session: the start-up banner, the `lunacm:>` loop and `lunacm -c <command>`; console: input,
output and password prompts; context: what a command handler works with and how it fails;
auth: partition logins (SoftHSM checks the PIN, the appliance counts the attempt);
cmd_slot, cmd_role, cmd_hagroup: the command families; commands: the command tree.
"""
