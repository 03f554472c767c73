-- Random 1 MiB ranges anywhere inside a file of FILE_SIZE bytes; the same mix for every server.
local size = tonumber(os.getenv("FILE_SIZE"))
local span = 1024 * 1024
math.randomseed(os.time())
request = function()
  local first = math.random(0, size - span)
  wrk.headers["Range"] = "bytes=" .. first .. "-" .. (first + span - 1)
  return wrk.format(nil)
end
