-- wrk script used by bench/rest_throughput.py: one FHIR interaction against [base]/Patient.
--
--   wrk -t T -c C -d 10s -s bench/wrk/fhir_rest.lua http://HOST:PORT -- \
--       MODE BASE_PATH TEMPLATE_FILE IDS_FILE RUN_TAG SAMPLE_EVERY THREADS
--
--   MODE           create | read | update
--   BASE_PATH      path of the FHIR base, e.g. /fhir
--   TEMPLATE_FILE  Patient JSON with {{KEY}} placeholders (create, update), or "-"
--   IDS_FILE       one Patient id per line (read, update), or "-"
--   RUN_TAG        makes create bodies unique across runs and cells
--   SAMPLE_EVERY   verify the 1st and every Nth response of each thread
--   THREADS        the -t value (update spreads ids over the threads)
--
-- Placeholders filled per request: ID (update), UID, FAMILY, BIRTH, PHONE, LINE.
-- Authorization: when the environment variable FHIR_BENCH_TOKEN is set (rest_throughput.py sets it unless
-- --open), every request carries `Authorization: Bearer $FHIR_BENCH_TOKEN`.
-- The `done` function prints one line `WRK_JSON {...}` with the counts and latency percentiles (ms).

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

-- ---- per-thread state (globals, so that `done` can collect them with thread:get) ----------------
statuses = {}   -- status code -> count
checked = 0     -- responses verified
failed = 0      -- verifications that failed
failures = {}   -- the first few failure descriptions

local mode, base, tag, sample_every, nthreads
local token = os.getenv("FHIR_BENCH_TOKEN")
if token == "" then token = nil end
if token then wrk.headers["Authorization"] = "Bearer " .. token end
local parts, keys, tail = {}, {}, ""
local ids, nids = {}, 0
local counter, seen = 0, 0
local FAMILIES = { "Chalmers", "Windsor", "Nguyen", "Okafor", "Schmidt", "Rossi", "Kowalski", "Haddad",
                   "Tanaka", "Silva", "Johansson", "O'Brien", "Dubois", "Novak", "Fernández", "Müller" }

local function read_all(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("*a")
   f:close()
   return s
end

function init(args)
   mode, base = args[1], args[2]
   local template_path, ids_path = args[3], args[4]
   tag = args[5] or "run"
   sample_every = tonumber(args[6]) or 50
   nthreads = tonumber(args[7]) or 1
   if template_path and template_path ~= "-" then
      local t = read_all(template_path)
      local pos = 1
      while true do
         local s, e, key = t:find("{{(%u+)}}", pos)
         if not s then break end
         parts[#parts + 1] = t:sub(pos, s - 1)
         keys[#keys + 1] = key
         pos = e + 1
      end
      tail = t:sub(pos)
   end
   if ids_path and ids_path ~= "-" then
      for line in io.lines(ids_path) do
         if #line > 0 then
            nids = nids + 1
            ids[nids] = line
         end
      end
   end
   math.randomseed(os.time() * 1000 + (tid or 1) * 7919)
end

local function values()
   counter = counter + 1
   local n, t = counter, tid or 1
   local v = {
      UID = tag .. "-" .. t .. "-" .. n,
      FAMILY = FAMILIES[(n + t) % #FAMILIES + 1],
      BIRTH = string.format("%04d-%02d-%02d", 1930 + (n * 7) % 85, 1 + n % 12, 1 + (n * 13) % 28),
      PHONE = string.format("+1 555 %03d %04d", (n * 31 + t) % 1000, n % 10000),
      LINE = tostring(1 + (n * 17 + t) % 9999),
   }
   if mode == "update" then
      -- Walk the pool in order, threads interleaved: requests in flight at the same time target
      -- different ids as long as the pool is larger than the number of connections.
      v.ID = ids[((t - 1) + (n - 1) * nthreads) % nids + 1]
   end
   return v
end

local function body_from(v)
   local buf = {}
   for i = 1, #keys do
      buf[#buf + 1] = parts[i]
      buf[#buf + 1] = v[keys[i]]
   end
   buf[#buf + 1] = tail
   return table.concat(buf)
end

-- wrk.format uses the headers given instead of wrk.headers (all but Host), so Authorization goes in each.
local function with_auth(h)
   if token then h["Authorization"] = "Bearer " .. token end
   return h
end

function request()
   if mode == "read" then
      return wrk.format("GET", base .. "/Patient/" .. ids[math.random(nids)],
                        with_auth({ ["Accept"] = "application/fhir+json" }))
   end
   local v = values()
   local headers = with_auth({ ["Content-Type"] = "application/fhir+json", ["Accept"] = "application/fhir+json" })
   if mode == "create" then
      return wrk.format("POST", base .. "/Patient", headers, body_from(v))
   end
   return wrk.format("PUT", base .. "/Patient/" .. v.ID, headers, body_from(v))
end

local function header(h, name)
   for k, v in pairs(h) do
      if string.lower(k) == name then return v end
   end
   return nil
end

local function check(status, h, body)
   local patient = body and body:find('"resourceType":"Patient"', 1, true)
   if mode == "create" then
      if status ~= 201 then return "expected 201, got " .. status end
      local loc = header(h, "location")
      if not loc or not loc:find("/Patient/[%w%-%.]+/_history/1$") then
         return "201 without a Location [base]/Patient/{id}/_history/1: " .. tostring(loc)
      end
      if not patient then return "201 body is not the created Patient" end
   elseif mode == "read" then
      if status ~= 200 then return "expected 200, got " .. status end
      if not patient then return "200 body is not a Patient" end
      if not header(h, "etag") then return "200 without an ETag" end
   else
      if status ~= 200 then return "expected 200, got " .. status end
      local loc = header(h, "content-location") or header(h, "location")
      if not loc or not loc:find("/_history/%d+$") then return "200 without a versioned Content-Location" end
      if not patient then return "200 body is not the updated Patient" end
   end
   return nil
end

function response(status, h, body)
   statuses[status] = (statuses[status] or 0) + 1
   seen = seen + 1
   if sample_every > 1 and seen % sample_every ~= 1 then return end
   checked = checked + 1
   local problem = check(status, h, body)
   if problem then
      failed = failed + 1
      if #failures < 5 then
         failures[#failures + 1] = problem .. " | body: " .. string.sub(body or "", 1, 300)
      end
   end
end

-- ---- summary ------------------------------------------------------------------------------------

local function jstr(s)
   s = tostring(s):gsub('[%c"\\]', function(c)
      if c == '"' then return '\\"' end
      if c == "\\" then return "\\\\" end
      return string.format("\\u%04x", c:byte())
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local agg, n_checked, n_failed, fails = {}, 0, 0, {}
   for _, t in ipairs(threads) do
      for code, count in pairs(t:get("statuses") or {}) do
         agg[code] = (agg[code] or 0) + count
      end
      n_checked = n_checked + (t:get("checked") or 0)
      n_failed = n_failed + (t:get("failed") or 0)
      for _, f in ipairs(t:get("failures") or {}) do
         if #fails < 5 then fails[#fails + 1] = f end
      end
   end
   local st = {}
   for code, count in pairs(agg) do st[#st + 1] = jstr(code) .. ":" .. count end
   local fl = {}
   for _, f in ipairs(fails) do fl[#fl + 1] = jstr(f) end
   local e = summary.errors
   local ms = function(us) return string.format("%.3f", us / 1000.0) end
   io.write("WRK_JSON {",
      '"requests":', summary.requests, ",",
      '"duration_us":', summary.duration, ",",
      '"bytes":', summary.bytes, ",",
      '"socket_errors":{"connect":', e.connect, ',"read":', e.read, ',"write":', e.write,
      ',"timeout":', e.timeout, "},",
      '"non_2xx_3xx":', e.status, ",",
      '"statuses":{', table.concat(st, ","), "},",
      '"latency_ms":{"p50":', ms(latency:percentile(50)), ',"p90":', ms(latency:percentile(90)),
      ',"p99":', ms(latency:percentile(99)), ',"max":', ms(latency.max), ',"mean":', ms(latency.mean), "},",
      '"checked":', n_checked, ',"check_failures":', n_failed, ',"failure_samples":[', table.concat(fl, ","), "]",
      "}\n")
end
