-- wrk script: requests PATH1, PATH2, ... PATHn in turn, where PATH is the path of
-- wrk's URL and n the script's first argument (default 100):
--   wrk -s bench/peers/objects.lua http://host/1k/obj -- 100
local n, i, prefix = 100, 0, nil

function init(args)
  if args[1] then n = tonumber(args[1]) end
end

function request()
  if prefix == nil then prefix = wrk.path end
  i = (i % n) + 1
  return wrk.format("GET", prefix .. i)
end
