-- bench/pkcs11_bench.lua: signatures per second through dhsm.pkcs11 against
-- a plain C loop (build/bench/p11_sign_c, built by `make bench`) calling the same
-- SoftHSM2 library on the same token and key: ECDSA P-256 and RSA-2048,
-- 32 bytes signed, one C_SignInit + C_Sign each.  Signatures per CPU
-- second of the process (SoftHSM2 signs in the calling thread, so on a
-- quiet machine that is per second; on a shared one it is what the other
-- work does not disturb).  Each side runs 25 short times, interleaved; the
-- best run counts.  Not a test.
--   ./dhsm -I tests exec bench/pkcs11_bench.lua [N]      (N = 1000 ECDSA signatures a run, N/4 RSA)
local t = require "dhsm.test"
local p11 = require "support.p11"
local util = require "dhsm.util"
local N = tonumber((...)) or 1000
local C_LOOP = os.getenv("P11_SIGN_C") or "build/bench/p11_sign_c"
local ROUNDS = 25

if not p11.available() then
  print("pkcs11_bench: SoftHSM2 is not installed")
  return
end
if not util.read_file(C_LOOP) then
  print("pkcs11_bench: " .. C_LOOP .. " is missing: run `make bench`")
  return
end

-- The keys are made first, then the library is loaded afresh, so both
-- sides start from a token read from disk.
local hsm = p11.softhsm { "bench" }
do
  local lib <close> = hsm:load()
  local s <close> = lib:open { label = "bench", rw = true }
  s:login("user", hsm:pin("bench"))
  s:generate_ec { label = "bench-ec" }
  s:generate_rsa { label = "bench-rsa" }
end
local lib = hsm:load()
local s = lib:open { label = "bench" }
s:login("user", hsm:pin("bench"))
local ec = s:find_one { label = "bench-ec", class = "private_key" }
local rsa = s:find_one { label = "bench-rsa", class = "private_key" }
local data = ("x"):rep(32)

local function lua_loop(key, mech, n)
  local sign = s.sign
  local t0 = os.clock()
  for _ = 1, n do sign(s, key, mech, data) end
  return os.clock() - t0
end

local function c_loop(key_label, mech, n)
  local q = util.shell_quote
  local cmd = ("SOFTHSM2_CONF=%s %s %s bench %s %s %d %s"):format(q(hsm.conf), C_LOOP, q(p11.LIB),
    key_label, mech, n, q(hsm.dir .. "/bench.user.pin"))
  local f = assert(io.popen(cmd))
  local out = f:read("a")
  f:close()
  return tonumber(out:match("in ([%d.]+) s")) or error("p11_sign_c failed: " .. out)
end

local function run(label, key, key_label, mech, n)
  lua_loop(key, mech, n // 10)                  -- warm up
  local lua_s, c_s = math.huge, math.huge
  for _ = 1, ROUNDS do                           -- interleaved: the machine's mood hits both
    c_s = math.min(c_s, c_loop(key_label, mech, n))
    lua_s = math.min(lua_s, lua_loop(key, mech, n))
  end
  local lua_rate, c_rate = n / lua_s, n / c_s
  print(("%-28s C loop %8.0f sig/s   dhsm.pkcs11 %8.0f sig/s   binding/C %5.1f %%"):format(
    label, c_rate, lua_rate, lua_rate / c_rate * 100))
end

print(("pkcs11_bench: SoftHSM2, %d ECDSA and %d RSA signatures per run, best of %d, per CPU second")
  :format(N, N // 4, ROUNDS))
run("ECDSA P-256 (CKM_ECDSA)", ec, "bench-ec", "ECDSA", N)
run("RSA-2048 (SHA256_RSA_PKCS)", rsa, "bench-rsa", "SHA256_RSA_PKCS", N // 4)
-- What the binding itself costs: a call that is checked and answered
-- without reaching the token.
local calls, t0 = 200000, os.clock()
for _ = 1, calls do s:random(0) end
print(("%-28s %.2f µs per call"):format("binding call, no token", (os.clock() - t0) / calls * 1e6))
s:close()
t.run_file_cleanups()
