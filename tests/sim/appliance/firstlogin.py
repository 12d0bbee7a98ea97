"""The forced password change of an appliance fresh from Microsoft (knob force_password_change).

An interactive login shows the starred box and a Linux passwd dialogue before the
first prompt, as the real 7.2.0-220 did (luna-field.md 1.1, [V]): no current password
asked, `New password:` / `Retype new password:`, then `passwd: all authentication tokens
updated successfully.` and LunaSH's `Password change successful.`. What a rejected
password prints was not published: the simulator prints Linux passwd's wording and ends
the session (invented). An exec request (`ssh host cmd`) cannot change it: it gets
OpenSSH's "no TTY" sentence and exit status 1 (invented).
"""
from appliance import model

BOX = """*****************************************************
**                                                 **
**   For security purposes, you must change your   **
**   password.                                     **
**                                                 **
**   Please ensure you store your new password     **
**   in a secure location.                         **
**                                                 **
**               DO NOT LOSE IT!                   **
**                                                 **
*****************************************************

Changing password for user tenantadmin.

You can now choose the new password.

The password must be at least 8 characters long.
The password must contain characters from at least 3 of the following 4 categories:
    - Uppercase letters (A through Z)
    - Lowercase letters (a through z)
    - Numbers (0 through 9)
    - Non-alphanumeric characters (such as !, $, #, %)

"""
NO_TTY = "Password change required but no TTY available."
MIN_LENGTH = 8


def required(device):
    return bool(device.state["faults"].get("force_password_change"))


def acceptable(password):
    classes = (str.isupper, str.islower, str.isdigit, lambda c: not c.isalnum())
    return len(password) >= MIN_LENGTH and sum(any(test(c) for c in password) for test in classes) >= 3


def run(shell):
    """The dialogue; True when the password was changed (the shell goes on), False to end the session."""
    term = shell.term
    term.write(BOX + "New password:")
    first = term.read_line(mask="")
    term.write("Retype new password:")
    again = term.read_line(mask="")
    if not term.pty:
        term.write("\n")
    if first is None or again is None:
        return False
    if first != again:
        term.write("Sorry, passwords do not match.\npasswd: Authentication token manipulation error\n")
        return False
    if not acceptable(first):
        term.write("BAD PASSWORD: The password fails the dictionary check - it does not contain enough "
                   "DIFFERENT characters\npasswd: Authentication token manipulation error\n")
        return False
    with shell.device.mutate() as state:
        state["admin"] = model.hash_secret(first)
        state["faults"]["force_password_change"] = False
        shell.device.paths.write_secret("password", first)
        shell.device.world.changed()
    shell.device.syslog.write("passwd", 3301, "pam_unix(passwd:chauthtok): password changed for tenantadmin")
    term.write("passwd: all authentication tokens updated successfully.\nPassword change successful.\n\n")
    return True
