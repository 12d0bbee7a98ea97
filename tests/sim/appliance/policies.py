"""HSM policies (a subset of the Luna 7 table) and how `hsm showPolicies` prints them.

Policy 15 "Enable SO reset of partition PIN" is the one the troubleshooting
guide cares about: with it off (the default) a Crypto Officer who reaches the
failed-login threshold is locked out for good; with it on the Partition SO can
reset the CO. Changing a destructive policy erases every partition.
"""

# code -> (description, default, destructive)
POLICIES = {
    7: ("Allow cloning", 1, True),
    12: ("Allow non-FIPS algorithms", 1, True),
    15: ("Enable SO reset of partition PIN", 0, True),
    16: ("Allow network replication", 1, False),
    21: ("Force user PIN change after set/reset", 1, False),
    22: ("Allow offboard storage", 1, True),
    35: ("Allow Acceleration", 1, True),
    39: ("Allow Remote PED usage", 0, False),
}
SO_RESET_PIN = 15
CAPABILITIES = (("Enable PIN-based authentication", "Allowed"), ("Enable PED-based authentication", "Disallowed"),
                ("Performance level", "15"), ("Enable cloning", "Allowed"), ("Enable non-FIPS algorithms", "Allowed"),
                ("Enable SO reset of partition PIN", "Allowed"), ("Enable network replication", "Allowed"),
                ("Enable Remote PED usage", "Allowed"), ("HSM non-volatile storage space", "33554432"))


def defaults():
    """State keeps codes as strings: JSON object keys are strings anyway."""
    return {str(code): default for code, (_, default, _) in POLICIES.items()}


def value(hsm, code):
    return hsm["policies"].get(str(code), POLICIES[code][1])


def render(hsm, serial, firmware):
    lines = [f"HSM Label:   {hsm['label']}", f"Serial #:    {serial}", f"Firmware:    {firmware}", "",
             "The following capabilities describe this HSM, and cannot be altered",
             "except via firmware or capability updates.", "",
             f"{'Description':<45}Value", f"{'===========':<45}====="]
    lines += [f"{name:<45}{val}" for name, val in CAPABILITIES]
    lines += ["", "The following policies describe the current configuration of",
              "this HSM and may be changed by the HSM Administrator.", "",
              "Changing policies marked \"destructive\" will erase all partitions on the HSM.", "",
              f"{'Description':<45}{'Value':<8}{'Code':<8}Destructive",
              f"{'===========':<45}{'=====':<8}{'====':<8}==========="]
    for code, (name, _, destructive) in POLICIES.items():
        lines.append(f"{name:<45}{'On' if value(hsm, code) else 'Off':<8}{code:<8}{'Yes' if destructive else 'No'}")
    return lines
