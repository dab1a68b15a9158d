-- Counts the leases of a queue that ran out as failed attempts (lib/tasks.lua
-- expire_leases), before the queue's tasks are read, so a read shows each task
-- as it is: back in the queue, or in the carcel after its last attempt.
--
-- KEYS[1]  the queue's leases        (pb:{queue}:leases)
-- KEYS[2]  the queue's status events (pb:{queue}:taskevents)
-- KEYS[3]  the queue's carcel        (pb:{queue}:carcel)
-- KEYS[4]  on a Redis Cluster only: a key never written in the same slot
--          (_keys.slot_guard), so that this script, which derives keys, waits
--          (TRYAGAIN) while its slot migrates instead of running on one node
-- Derived keys (see lib/tasks.lua): task hashes, ready sets, custody hops.
-- ARGV[1]  key prefix "pb:{queue}:"
-- ARGV[2]  carcel retention ms
--
-- Returns ids of tasks whose "carceled" hop is pending (lib/tasks.lua), the
-- ones it carceled among them: their hops are the caller's to append.
expire_leases(ARGV[1], KEYS[1], KEYS[2], KEYS[3], clock_ms(), tonumber(ARGV[2]))
return pending_carcel_hops(ARGV[1])
