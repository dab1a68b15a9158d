-- Library, prepended to the task queue scripts (never run alone; after
-- lib/hops.lua and lib/fields.lua, whose functions it uses).
--
-- A queue's per-task keys are derived from its key prefix ARGV[1]
-- ("pb:{<queue>}:"), so they share the queue's hash tag (one cluster slot)
-- though no caller can name them in advance (a claim picks its task):
--   <prefix>task:<task id>      hash: the task (fields below)
--   <prefix>ready:<capability>  zset: queued tasks needing that capability ("" for
--                               none), all score 0, ordered by member:
--                               "<1000 - priority, 4 digits>:<posted seq>:<task id>"
--   <prefix>results:<task id>   list: serialized TaskResult per finished attempt
--   <prefix>hops:<tracking id>  hash: the task packet's custody hops (lib/hops.lua)
--   <prefix>carcelhops          set: ids of tasks moved to the carcel because their
--                               lease ran out, whose signed "carceled" hop is yet
--                               to be appended (by the server, after the script)
--   <prefix>claimreq:<request id>  hash: a claim made for a request id (t task id,
--                               f fencing token, w worker), kept about a lease long,
--                               so a retried claim returns the same task
-- Task hash fields: p packet bytes, n content length, i tracking id, fp
-- fingerprint, st status (queued|claimed|completed|carceled), rk its ready
-- member, cap, claims, fails, max, w worker, f fencing token, lu lease end ms,
-- lease lease ms, pa posted ms, ua updated ms, x expiry ms, rc claims when it was
-- last requeued from the carcel (its carcel entries count the claims after), and per settled
-- fencing token s:<token> = "<class> <request digest> <outcome> <value>" (class:
-- complete|fail|release|server, see task_settle.lua; outcome: the kind done;
-- value: a carcel entry id or ""),
-- so a settlement replayed after a lost reply answers its first outcome.

local function event(events, task_id, old, new, actor, fence, reason)
  redis.call('XADD', events, 'MAXLEN', '~', 10000, '*', 'id', task_id, 'o', old, 'n', new,
    'a', actor, 'f', fence, 'r', reason)
end

-- Up to 100 ids of tasks whose "carceled" hop is pending (see carcelhops): every
-- script that may carcel a task returns them, so a hop whose first reply was lost
-- is appended by the next call (appending it is idempotent).
local function pending_carcel_hops(prefix)
  return redis.call('SRANDMEMBER', prefix .. 'carcelhops', 100)
end

-- Moves task `task_id` (fields `f`) to the queue's carcel with `reason` and
-- `detail`; returns the carcel entry id. The entry counts the claims since the
-- task was last requeued from the carcel (as a requeued packet's deliveries
-- count from 1 again). The task's hops are kept as long as the entry. The
-- caller has counted the failure and removed the lease.
local function carcel_task(prefix, carcel, task_id, f, now, retention, reason, detail)
  local expiry = tonumber(f['x'])
  local claims = tonumber(f['claims']) - tonumber(f['rc'] or '0')
  local id = redis.call('XADD', carcel, '*', 'p', f['p'], 'n', f['n'], 't', math.max(1, expiry - now),
    'i', f['i'], 'c', 'task:' .. task_id, 'r', reason, 'd', detail,
    's', 'queue:' .. string.match(prefix, '^pb:{(.*)}:$'), 'a', claims)
  redis.call('XTRIM', carcel, 'MINID', '~', now - retention)
  redis.call('PEXPIRE', carcel, retention)
  keep_until(prefix .. 'hops:' .. f['i'], now + retention)
  redis.call('HSET', prefix .. 'task:' .. task_id, 'st', 'carceled', 'w', '', 'ua', now)
  return id
end

-- A lease that ran out is a failed attempt, as a failure reported by its worker
-- is: the task goes back to its ready set, or after its last attempt to the
-- carcel ("max attempts"). Handles up to 100 leases of the queue that ended by
-- `now`; the tasks it carcels join carcelhops (their "carceled" custody hops
-- are the caller's to append).
local function expire_leases(prefix, leases, events, carcel, now, retention)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 100)
  for _, task_id in ipairs(expired) do
    local key = prefix .. 'task:' .. task_id
    local f = hash_fields(key)
    redis.call('ZREM', leases, task_id)
    if f['st'] == 'claimed' and tonumber(f['lu']) <= now then
      local fails = redis.call('HINCRBY', key, 'fails', 1)
      if fails >= tonumber(f['max']) then
        carcel_task(prefix, carcel, task_id, f, now, retention, 'max attempts',
          'its lease ran out on its last attempt (' .. f['max'] .. ')')
        event(events, task_id, 'claimed', 'carceled', 'server', f['f'], 'lease expired')
        local pending = prefix .. 'carcelhops'
        redis.call('SADD', pending, task_id)
        keep_until(pending, tonumber(f['x']))
      else
        redis.call('HSET', key, 'st', 'queued', 'w', '', 'ua', now)
        redis.call('ZADD', prefix .. 'ready:' .. f['cap'], 0, f['rk'])
        event(events, task_id, 'claimed', 'queued', 'server', f['f'], 'lease expired')
      end
    end
  end
end
