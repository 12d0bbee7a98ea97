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

from appliance import layouts, rc  # noqa: E402


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


class ReturnCodeTest(unittest.TestCase):
    def test_table_shared_with_dhsm(self):
        self.assertEqual(rc.PIN_INCORRECT, ("A00000", "LUNA_RET_UM_PIN_INCORRECT"))
        self.assertEqual(rc.TOKEN_LOCKED_OUT, ("300002", "LUNA_RET_TOKEN_LOCKED_OUT"))
        self.assertEqual(rc.NOT_LOGGED_IN[0], "1010000")
        self.assertNotEqual(rc.NOT_LOGGED_IN[0], "300002")  # 300002 is the token lock-out (section 10.2)


if __name__ == "__main__":
    from arm_selftest import main as run_tests
    run_tests(sys.modules[__name__])
