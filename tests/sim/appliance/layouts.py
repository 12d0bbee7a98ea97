"""How LunaSH lays out its output, per software generation: `lunash_layout` 5, 6 or 7.

Where a real appliance's output was published (shared/reference/luna-field.md), the
layout here reproduces it byte for byte; tests/sim/appliance_selftest.py compares
against tests/fixtures/luna. Where it was not, the layout is the simulator's own and
tests/sim/README.md (fidelity table) says "invented". Sources, by section of the
reference:
  7  hsm show 2.1 (7.2.0-220, [V]); partition list 3.3 (7.8.5, [V*]); client show 5.2
     (7.8.5); register/assign spacing 5.3 (7.0/7.2: two blank lines around the success line)
  6  hsm show 2.2 (6.2.2-5, [V*] words; columns as in 5.x/7.x); partition list 3.2 (6.2.2
     rows and header, [V*]); client show 5.2 (IP-registered, 6.0)
  5  hsm show 2.4 (5.3.0-11, [V]); partition list 3.1 ([V]); client show/list 5.1/5.2 ([V])
"""
LAYOUTS = (5, 6, 7)

BANNERS = {
    7: "Luna Network HSM Command Line Shell v7.2.0-220. Copyright (c) 2018 SafeNet. All rights reserved.",
    6: "Luna Network HSM Command Line Shell v6.2.2-5. Copyright (c) 2016 SafeNet. All rights reserved.",  # invented
    5: "Luna SA 5.4.7-1 Command Line Shell - Copyright (c) 2001-2014 SafeNet, Inc. All rights reserved.",
}
SOFTWARE = {7: "7.2.0-220", 6: "6.2.2-5", 5: "5.3.0-11"}
FIRMWARE = {7: "7.0.3", 6: "6.10.9", 5: "6.10.1"}

# blank lines (after the command, before `Command Result`): per layout, then per command
SPACING = {7: (2, 2), 6: (1, 1), 5: (1, 2)}
SPACING_BY_COMMAND = {
    (7, "hsm show"): (2, 3),
    (5, "hsm show"): (2, 2),
    (5, "client show"): (2, 2),
    (5, "client fingerprint"): (3, 2),
    (5, "package list"): (2, 1),
}


# Without a PTY (commands fed on stdin, or an exec request) nothing is echoed and no prompt is
# printed (1.3, 7.8.5): a command's output starts at once and its `Command Result` follows one blank
# line, as the fullest copy (1.3-stdin-7.8.5-b) shows; the other copies dropped blank lines (14).
NO_PTY_SPACING = (0, 1)


def spacing(layout, command, lines):
    before, after = SPACING_BY_COMMAND.get((layout, command), SPACING[layout])
    if layout == 5 and command == "partition list" and lines and lines[-1].strip() == "There are no partitions.":
        after = 3  # 3.1: the empty list ends with three blank lines
    if layout == 5 and command == "client fingerprint" and not lines:
        before = 2  # 5.2: its error block has two blank lines before it, the fingerprint three
    return before, after


# hsm show ------------------------------------------------------------------------------
def _kv(indent, width):
    return lambda label, value: f"{indent}{label + ':':<{width}}{value}".rstrip()


def hsm_show(layout, d):
    """D: serial, label, model, logged_in, attempts, audit_initialized, partitions [(serial, name)],
    max_partitions, storage, used, fips -> the lines of `hsm show`."""
    ind = "" if layout == 6 else "   "
    app, hsm, store = _kv(ind, 33), _kv(ind, 36), _kv(ind, 37)
    out = [f"{ind}Appliance Details:", f"{ind}==================", app("Software Version", SOFTWARE[layout]), ""]
    title = "HSM Details: " if layout == 5 else "HSM Details:"   # 2.3/2.4: with a trailing space
    label = d["label"] or ("no label" if layout == 5 else "")
    out += [ind + title, f"{ind}============", hsm("HSM Label", label), hsm("Serial #", d["serial"]),
            hsm("Firmware", FIRMWARE[layout])]
    if layout == 5:
        out.append(hsm("Hardware Model", "Luna K6"))
    else:
        out.append(hsm("HSM Model", "Luna K7" if layout == 7 else "K6 Base"))
    if layout == 7:
        out.append(hsm("HSM Part Number", "808-000066-001"))
    out += [hsm("Authentication Method", "Password"),
            hsm("HSM Admin login status", "Logged In" if d["logged_in"] else "Not Logged In"),
            hsm("HSM Admin login attempts left", d["attempts"]), hsm("RPV Initialized", "No"),
            hsm("Audit Role Initialized", "Yes" if d["audit_initialized"] else "No"),
            hsm("Remote Login Initialized", "No"), hsm("Manually Zeroized", "No")]
    if layout == 7:
        out += [hsm("Secure Transport Mode", "No"), hsm("HSM Tamper State", "No tamper(s)")]
    out.append("")
    if layout == 5:
        out += [f"{ind}Partitions created on HSM: ", f"{ind}=========================="]
        out += [f"{ind}Partition: {sn},     Name: {name}" for sn, name in d["partitions"]] or \
            [f"{ind}There are no partitions.", ""]
    else:
        out += [f"{ind}Partitions created on HSM:", f"{ind}=============================="]
        out += [f"{ind}Partition:            {sn}, Name: {name}" for sn, name in d["partitions"]]
        if not d["partitions"]:
            out += [f"{ind}There are no partitions.", "", ""]
        out += [store("Number of partitions allowed", d["max_partitions"]),
                store("Number of partitions created", len(d["partitions"]))]
    fips = "is in" if d["fips"] else "is NOT in"
    out += ["", f"{ind}FIPS 140-2 Operation:", f"{ind}=====================",
            f"{ind}The HSM {fips} FIPS 140-2 approved operation mode.", "",
            f"{ind}HSM Storage Information:", f"{ind}========================",
            store("Maximum HSM Storage Space (Bytes)", d["storage"]), store("Space In Use (Bytes)", d["used"]),
            store("Free Space Left (Bytes)", d["storage"] - d["used"])]
    if layout == 7:
        out += ["", f"{ind}Environmental Information on HSM:", f"{ind}=================================",
                store("Battery Voltage", "3.093 V"), store("Battery Warning Threshold Voltage", "2.750 V"),
                store("System Temp", "35 deg. C"), store("System Temp Warning Threshold", "75 deg. C")]
    return out


# partition list ------------------------------------------------------------------------
PARTITION_HEAD = {
    7: ["                                                                              Storage (bytes)",
        "                                                       Partition    ----------------------------------",
        "Partition            Name                              Version      Objects  Total     Used     Free",
        "===================  ================================  ===========  =======  =======  =======  ======="],
    6: ["                                          Storage (bytes)",           # invented: the copies are mangled
        "                                    ----------------------------",
        "Partition            Name                   Objects   Total    Used    Free",
        "==========================================================================="],
    5: ["                                                      Storage (bytes)",
        "                                                ----------------------------",
        " Partition    Name                     Objects     Total      Used      Free",
        " ==========================================================================="],
}


def partition_list(layout, rows):
    """ROWS: [(serial, name, objects, total, used)] -> the lines of `partition list`."""
    if not rows:
        return ["   There are no partitions."] if layout == 5 else ["There are no partitions."]
    out = list(PARTITION_HEAD[layout])
    for serial, name, objects, total, used in rows:
        if layout == 7:
            out.append(f"{serial:<19}  {name:<32}  {'0':<11}  {objects:>7}  {total:>7}  {used:>7}  {total - used:>7}")
        elif layout == 6:
            out.append(f"{serial:<21}{name:<21}{objects:>9}{total:>8}{used:>8}{total - used:>8}")
        else:
            # 3.1's 13-wide serial column, kept 2 blanks from the name even for a 7.x serial (13 digits)
            out.append(f" {serial:<11}  {name:<23}{objects:>9}{total:>10}{used:>10}{total - used:>10}")
    return out


# client show ---------------------------------------------------------------------------
def client_show(layout, name, ip, hostname, partitions):
    """5.2: `Label:` padded to 14; hostname-registered 7.x/5.1 clients have no IPAddress line,
    IP-registered 6.x ones no Hostname line; 5.3/6.x add HTL Required / OTT Expiry."""
    parts = ", ".join(f'"{p}"' for p in partitions) or "<none>"
    out = [f"ClientID:     {name}"]
    if ip:
        out.append(f"IPAddress:    {ip}")
    if hostname:
        out.append(f"Hostname:     {hostname}")
    if layout in (5, 6):
        out += ["HTL Required: no", "OTT Expiry:   n/a"]
    return out + [f"Partitions:   {parts}"]


# package list (invented for 6.x/7.x: only 5.1's was published, 6.5) --------------------
def package_list(system, software):
    return ["RPM LIST (SYSTEM)", "-------------------", *system, "", "",
            "RPM LIST (SOFTWARE)", "-------------------", *software]


# proceed/quit questions ----------------------------------------------------------------
# What LunaSH writes for the question of a command, up to and including the input marker
# ("> "), by command and layout; "*" serves every layout. Published (luna-field.md, fixtures in
# tests/fixtures/luna), by reference line: partition create 6 (597, 3.4-partition-create-6.2.2)
# and 7 (612, 3.4-partition-create-7.0/7.2); hsm login at the last attempt, 7 (739,
# 4.2-hsm-login-last-7); hsm init, 6 (779, 4.3-hsm-init-6.2.2); hsm changePolicy, destructive, 6
# (863, 4.5-hsm-changepolicy-6.2.2); client delete, 5 (1089, a regex fragment); sysconf regenCert
# (1122, wording only); hsm restart (1348, 6.7). Other layouts of these commands use the published
# text (our assumption: tests/sim/README.md); commands not listed keep TEMPLATE (invented).
TEMPLATE = "Type 'proceed' to {action}, or 'quit' to quit now.\n> "

_LAST_LOGIN = ("Caution:  This is your LAST available HSM Admin login attempt.\n"
               "          If the wrong HSM Admin password is provided the HSM will\n"
               "          be ZEROIZED!!!\n"
               "\n"
               "          Type 'proceed' if you are certain you have the right\n"
               "          HSM Admin login credentials or 'quit' to quit now.\n"
               "          > ")

PROMPTS = {
    "partition create": {
        7: "          Type 'proceed' to create the partition, or\n          'quit' to quit now.\n          > ",
        6: "Type 'proceed' to create the initialized partition, or 'quit' to quit now.\n   > ",
        5: "Type 'proceed' to create the initialized partition, or 'quit' to quit now.\n   > ",  # 6.x's (assumed)
    },
    "hsm login": {"*": _LAST_LOGIN},  # 7.x published; 6.x/5.x the same (assumed)
    "hsm init": {"*": "CAUTION:  Are you sure you wish to initialize this HSM?\n"
                      "\n"
                      "Type 'proceed' to initialize the HSM, or 'quit'\n"
                      "    to quit now.\n"
                      "    > "},
    "hsm changepolicy": {"*": "CAUTION: Are you sure you wish to change the destructive policy named:\n"
                              "\n"
                              "{policy}\n"
                              "\n"
                              "Changing this policy will result in erasing all partitions on the HSM! (HSM Admin, "
                              "Domain, and M of N (where applicable) will not be modified.\n"
                              "\n"
                              "Type 'proceed' to zeroize your HSM and change the policy, or 'quit' to quit now.\n"
                              "\n"
                              "> "},
    "client delete": {"*": "CAUTION:  Are you sure you wish to delete client named:\n"
                           "            {name}\n"
                           "          Type 'proceed' to delete the client, or 'quit'\n"
                           "          to quit now.\n"
                           "          > "},  # the "> " line is ours: the regex stops before it
    "sysconf regencert": {"*": "WARNING !!  This command will overwrite the current server certificate and private key.\n"
                               "All clients will have to add this server again with this new certificate.\n"
                               "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'\n"
                               "> "},  # "> " as `hsm restart`'s (1348); the text's indent in 1122 is the tool's
    "hsm restart": {"*": "WARNING !!  This command will restart the HSM card.\n"
                         "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'\n"
                         "> "},  # 1346-1348 (6.7, a 7.x K7), byte for byte; other layouts the same (assumed)
}
# What `hsm restart` prints once answered `proceed` (1350-1351); no `Command Result` line was published
# after it (1378): the simulator's own line follows, as after every command.
RESTART_LINES = ("Proceeding...", "Restarting HSM card in progress. Please wait...")

# blank lines before a question that opens the command's output, where not the layout's SPACING
# `hsm restart` asks on the line after the command (6.7, 1346-1347; 5.x/6.x the same: assumed)
QUESTION_SPACING = {(7, "hsm login"): 1, **{(layout, "hsm restart"): 0 for layout in (5, 6, 7)}}
# ... before a password prompt that opens it: 7.x `hsm login` asks at once (4.1: S4 7.2, S6 7.x FM)
PASSWORD_SPACING = {(7, "hsm login"): 0}
# blank lines between the answer to a command's last prompt and what it prints next (none where not
# listed): `hsm login` 7.x two (S4 success, S15 failure, 4.1/4.2), 6.x one (4.1, 6.2.2), 5.x as 6.x (assumed)
ANSWER_SPACING = {(7, "hsm login"): 2, (6, "hsm login"): 1, (5, "hsm login"): 1}

# The `Command Result` line a failed command ends with, where not "65535 (Luna Shell execution)": the
# only published 7.x `hsm login` failure (4.2, S15, third-party and unconfirmed, 14) ends
# "Command Result : 0 (Success)"; 5.x failures end 65535 (5.2). Taken for every 7.x `hsm login` failure.
FAILED_RESULT = {(7, "hsm login"): "Command Result : 0 (Success)"}


def question(layout, command, action=None, caution=None, **values):
    """The question COMMAND (lower case) asks: (blank lines before it when it opens the output,
    None for the layout's SPACING; the text through the "> " marker). ACTION/CAUTION fill TEMPLATE
    for commands with no published question; VALUES fill the published ones."""
    forms = PROMPTS.get(command, {})
    text = forms.get(layout, forms.get("*"))
    if text is None:
        text = (caution + "\n\n" if caution else "") + TEMPLATE.format(action=action)
    else:
        text = text.format(**values)
    return QUESTION_SPACING.get((layout, command)), text
