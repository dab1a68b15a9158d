-- Library, prepended to the task queue scripts (never run alone).
--
-- A queue's per-task keys are derived from its key prefix ARGV[1]
-- ("pb:{<queue>}:"), so they share the queue's hash tag (one cluster slot)
-- though no caller can name them in advance (a claim picks its task):
--   <prefix>task:<task id>      hash: the task (fields below)
--   <prefix>ready:<capability>  zset: queued tasks needing that capability ("" for
--                               none), all score 0, ordered by member:
--                               "<1000 - priority, 4 digits>:<posted seq>:<task id>"
--   <prefix>results:<task id>   list: serialized TaskResult per finished attempt
-- Task hash fields: p packet bytes, n content length, i tracking id, fp
-- fingerprint, st status (queued|claimed|completed|carceled), rk its ready
-- member, cap, claims, fails, max, w worker, f fencing token, lu lease end ms,
-- lease lease ms, pa posted ms, ua updated ms, x expiry ms.

local function event(events, task_id, old, new, actor, fence, reason)
  redis.call('XADD', events, 'MAXLEN', '~', 10000, '*', 'id', task_id, 'o', old, 'n', new,
    'a', actor, 'f', fence, 'r', reason)
end
