#!/usr/bin/python3
"""Self-test of the simulator's LunaSH layouts against real published output, byte for byte
(tests/fixtures/luna: the blocks of shared/reference/luna-field.md, named by section).
The simulator's values are put in the published ones' place (serial, label, storage);
everything else - indent, value columns, rules, blank lines, trailing spaces - must match.

    /usr/bin/python3 tests/sim/layouts_selftest.py [-v]
"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
FIXTURES = os.path.join(HERE, "..", "fixtures", "luna")

from appliance import layouts, model, rc  # noqa: E402
from lunaclient import vtl  # noqa: E402


def fixture(name):
    with open(os.path.join(FIXTURES, name + ".txt")) as f:
        return f.read()


def transcript(prompt, command, layout, lines, code_line="Command Result : 0 (Success)"):
    """What the shell writes for one command (PTY output with CR LF turned into LF)."""
    before, after = layouts.spacing(layout, " ".join(command.split()[:2]), lines)
    return f"{prompt}{command}\n" + "\n" * before + "".join(line + "\n" for line in lines) + "\n" * after + \
        code_line + "\n"


class HsmShowTest(unittest.TestCase):
    def test_7_2_zeroized_2_1(self):
        lines = layouts.hsm_show(7, {"serial": "572413", "label": "", "logged_in": False,
                                     "attempts": "HSM IS ZEROIZED !!!!", "audit_initialized": True,
                                     "partitions": [], "max_partitions": 10, "storage": 33554432, "used": 0,
                                     "fips": False})
        self.assertEqual(transcript("[local_host] lunash:>", "hsm show", 7, lines), fixture("2.1-hsm-show-7.2"))

    def test_5_3_one_partition_2_4(self):
        lines = layouts.hsm_show(5, {"serial": "157541", "label": "patchLuna", "logged_in": False,
                                     "attempts": "3 before HSM zeroization!", "audit_initialized": False,
                                     "partitions": [("157541008", "patchPart")], "max_partitions": 10,
                                     "storage": 2097152, "used": 104857, "fips": False})
        self.assertEqual(transcript("[hsm-2-1-2-6] lunash:>", "hsm show", 5, lines) + "[hsm-2-1-2-6] lunash:>\n",
                         fixture("2.4-hsm-show-5.3"))

    def test_6_2_2_words_2_2(self):
        """The 6.2.2 copies had their whitespace edited: the lines, stripped, must match copy a's."""
        lines = layouts.hsm_show(6, {"serial": "534071", "label": "jpmonge", "logged_in": False,
                                     "attempts": "3 before HSM zeroization!", "audit_initialized": False,
                                     "partitions": [("534071009", "partition1")], "max_partitions": 10,
                                     "storage": 2097152, "used": 209715, "fips": True})
        published = [line for line in fixture("2.2-hsm-show-6.2.2-a").splitlines()[1:-1] if line.strip()]
        self.assertEqual([line for line in lines if line.strip()], published)


class PartitionListTest(unittest.TestCase):
    def test_7_8_5_3_3(self):
        lines = layouts.partition_list(7, [("1582775433934", "sp_sehsm3", 0, 648381, 0)])
        self.assertEqual("".join(line + "\n" for line in lines),
                         "".join(fixture("3.3-partition-list-7.8.5-a").splitlines(True)[2:]))

    def test_5_rows_and_empty_3_1(self):
        lines = layouts.partition_list(5, [("157826004", "testPar1", 0, 102701, 0),
                                           ("157826011", "testPar2", 2, 102701, 0)])
        self.assertEqual(transcript("[hsm-4-1-1-9] lunash:>", "partition list", 5, lines) + "[hsm-4-1-1-9] lunash:>\n",
                         fixture("3.1-partition-list-5"))
        empty = layouts.partition_list(5, [])
        self.assertEqual(transcript("[hsm-4-1-1-9] lunash:>", "partition list", 5, empty) + "[hsm-4-1-1-9] lunash:>\n",
                         fixture("3.1-partition-list-5-empty"))

    def test_6_rows_3_2(self):
        lines = layouts.partition_list(6, [("534071053", "partition6", 0, 207559, 0)])
        self.assertEqual(lines[-1], fixture("3.2-partition-list-6.2.2-b").splitlines()[-3])
        self.assertEqual(lines[2], fixture("3.2-partition-list-6.2.2-b").splitlines()[3])


class ClientShowTest(unittest.TestCase):
    def test_7_8_5_5_2(self):
        lines = layouts.client_show(7, "vciphertrust-i.daenerys.home", None, "vciphertrust-i.daenerys.home",
                                    ["sp_sehsm3"])
        self.assertEqual("".join(line + "\n" for line in lines),
                         "".join(fixture("5.2-client-show-7.8.5").splitlines(True)[2:]))

    def test_5_3_5_2(self):
        lines = layouts.client_show(5, "client2", None, "client2", [])
        self.assertEqual(transcript("[hsm-4-1-1-9] lunash:>", "client show -c client2", 5, lines)
                         + "[hsm-4-1-1-9] lunash:>\n", fixture("5.2-client-show-5.3"))

    def test_6_ip_registered_5_2(self):
        lines = layouts.client_show(6, "hsmclient", "10.220.203.73", None, ["partition1"])
        self.assertEqual("".join(line + "\n" for line in lines),
                         "".join(fixture("5.2-client-show-6-ip").splitlines(True)[:-2]))


class PackageListTest(unittest.TestCase):
    def test_5_1_6_5(self):
        published = fixture("6.5-package-list-5.1").splitlines()
        system = published[5:20]
        lines = layouts.package_list(system, [])
        self.assertEqual(transcript("[hsm-2-1-2-5] lunash:>", "package list", 5, lines), "\n".join(published[:-1]) + "\n")


class VtlVerifyTest(unittest.TestCase):
    """8.3: the table vtl.verify prints, from its parts."""

    def lines(self, rows):
        return ["", vtl.VERIFY_TITLE, "", *vtl.VERIFY_HEAD, *(vtl.verify_row(*row) for row in rows), ""]

    def test_6_tabs_8_3(self):
        block = fixture("8.3-vtl-verify-6-tabs").split("+ vtl verify\n", 1)[1].split("+ pkcs11-daemon", 1)[0]
        self.assertEqual("".join(line + "\n" for line in self.lines([(0, "500752010", "partition1")])), block)

    def test_10_7_2_tabs_expanded_8_3(self):
        published = fixture("8.3-vtl-verify-10.7.2").splitlines()[2:]  # after the 10.x banner
        ours = [line.expandtabs(8) for line in self.lines([(0, "1682975235230", "SP_SKS_SEHSM3")])]
        self.assertEqual(ours[:-1], published)

    def test_error_is_the_published_substring_8_3(self):
        self.assertEqual(f"Error: {vtl.NO_SLOTS}", "Error: Unable to find any Luna SA slots/partitions")


class SerialRuleTest(unittest.TestCase):
    """appliance/model.py's serials give the published ones back from what they stand for."""

    def test_7_x_is_the_creation_time_in_ms_3_3_8_3(self):
        self.assertEqual(model.partition_serial({}, False, 1582775433.934, set()), "1582775433934")  # 3.3
        self.assertEqual(model.partition_serial({}, False, 1682975235.230, set()), "1682975235230")  # 8.3

    def test_5_x_6_x_is_the_hsm_serial_and_3_digits_2_2_2_4(self):
        for hsm, number, published in (("157541", 8, "157541008"), ("534071", 9, "534071009")):
            state = {"serial": hsm, "next_partition": number}
            self.assertEqual(model.partition_serial(state, True, 0, set()), published)
            self.assertEqual(state["next_partition"], number + 1)

    def test_slot_numbers_stay_apart(self):
        taken = {model.slot_number("1582775433934")}
        self.assertEqual(model.partition_serial({}, False, 1582775433.934, taken), "1582775433935")
        self.assertEqual(model.slot_number("9123456780"), model.slot_number("1123456780"))  # SoftHSM's 31-bit mask
        hsm = model.new_serial(["571234"])
        self.assertRegex(hsm, r"^\d{6}$")
        self.assertNotEqual(model.slot_number(hsm + "001"), model.slot_number("571234001"))


def question(layout, command, **values):
    return layouts.question(layout, command, **values)[1]


class QuestionTest(unittest.TestCase):
    """The proceed/quit questions (layouts.PROMPTS), as written before the answer is typed."""

    def test_partition_create_7_3_4(self):
        text = question(7, "partition create")
        for name, host in (("3.4-partition-create-7.0", "cloudflare-hsm.softlayer.com"), ("3.4-partition-create-7.2",
                                                                                         "local_host")):
            self.assertTrue(fixture(name).endswith(transcript(
                f"[{host}] lunash:>", "partition create -partition KeylessSSL", 7,
                [text + "proceed", "'partition create' successful."])), name)

    def test_partition_create_6_3_4(self):
        self.assertIn("\n\n" + question(6, "partition create") + "proceed\n'partition create' successful.\n",
                      fixture("3.4-partition-create-6.2.2"))

    def test_hsm_login_last_attempt_7_4_2(self):
        self.assertTrue(fixture("4.2-hsm-login-last-7").startswith(
            "[local_host] lunash:>hsm login\n\n" + question(7, "hsm login") + "proceed\n\n"
            "  Please enter the HSM Administrators' password:\n  > "))
        self.assertEqual(layouts.question(7, "hsm login")[0], 1)

    def test_hsm_init_6_4_3(self):
        self.assertIn("> ********\n\n" + question(6, "hsm init") + "proceed\n", fixture("4.3-hsm-init-6.2.2"))

    def test_hsm_changepolicy_6_4_5(self):
        self.assertTrue(fixture("4.5-hsm-changepolicy-6.2.2").startswith(
            "[jdoe1] lunash:>hsm changepolicy -policy 12 -value 0\n\n"
            + question(6, "hsm changepolicy", policy="Allow non-FIPS algorithms") + "proceed\n"))

    def test_client_delete_5_regex_fragment(self):
        published = ("CAUTION:  Are you sure you wish to delete client named:\n"
                     "            {0}\n"
                     "          Type 'proceed' to delete the client, or 'quit'\n"
                     "          to quit now.\n")  # luna-field.md 1087-1092 (S2's expected_remove_client_prompt)
        self.assertEqual(question(5, "client delete", name="web1"), published.format("web1") + "          > ")

    def test_regencert_wording_6_2(self):
        published = ("WARNING !!  This command will overwrite the current server certificate and private key.\n"
                     "All clients will have to add this server again with this new certificate.\n"
                     "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'\n")
        self.assertEqual(question(7, "sysconf regencert"), published + "> ")  # luna-field.md 1120-1123

    def test_hsm_restart_6_7(self):
        block = fixture("6.7-hsm-fm-status-7")
        self.assertIn("lunash:>hsm restart\n" + question(7, "hsm restart") + "proceed\n"
                      + "".join(line + "\n" for line in layouts.RESTART_LINES), block)  # luna-field.md 1346-1351
        self.assertEqual(layouts.question(7, "hsm restart")[0], 0)

    def test_unpublished_commands_keep_the_template(self):
        self.assertEqual(layouts.question(7, "hsm zeroize", "zeroize the HSM", "CAUTION:  Sure?"),
                         (None, "CAUTION:  Sure?\n\nType 'proceed' to zeroize the HSM, or 'quit' to quit now.\n> "))


class ReturnCodeTest(unittest.TestCase):
    def test_table_shared_with_dhsm(self):
        self.assertEqual(rc.PIN_INCORRECT, ("A00000", "LUNA_RET_UM_PIN_INCORRECT"))
        self.assertEqual(rc.TOKEN_LOCKED_OUT, ("300002", "LUNA_RET_TOKEN_LOCKED_OUT"))
        self.assertEqual(rc.NOT_LOGGED_IN[0], "1010000")
        self.assertNotEqual(rc.NOT_LOGGED_IN[0], "300002")  # 300002 is the token lock-out (section 10.2)


if __name__ == "__main__":
    from arm_selftest import main as run_tests
    run_tests(sys.modules[__name__])
