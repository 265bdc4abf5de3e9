-- wrk script of the "miss" scenario: every request carries Basic alice:<a fresh wrong
-- password>, so no cache can answer (the app has negative_cache_ttl 0) and ext-authz
-- asks the IdP's token endpoint for each Check. Expected answer: 401.

local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

local function b64(data)
  return ((data:gsub('.', function(x)
    local r, byte = '', x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end

local n_threads = 0
function setup(thread)
  n_threads = n_threads + 1
  thread:set('tid', n_threads)  -- a global in that thread's Lua state
end

local counter = 0
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  counter = counter + 1
  local pw = string.format('wrong-%d-%d-%d', tid or 0, counter, math.random(1, 1000000000))
  wrk.headers['Authorization'] = 'Basic ' .. b64('alice:' .. pw)
  return wrk.format()
end
