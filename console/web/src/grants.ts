// Which actions the signed-in caller may take, from /api/me's grants: the console shows
// a button only when packetbus would allow the call (the server still decides).
//
// A grant is {permission, resource}: `permission` is a permission name
// ("packets.approve") or "*"; `resource` is an fnmatch glob over the resource (a topic
// for the governance and carcel permissions), case-sensitive, `*` crossing "." and "/",
// "{agent}" standing for the caller's own agent id, matched literally.

export interface Grant {
  permission: string;
  resource: string;
}

export interface Caller {
  principal: string;
  authenticated: boolean;
  source: string;
  agentId: string;
  roles: string[];
  grants: Grant[];
}

/** A regular expression matching what the fnmatch glob `pattern` matches, whole. */
export function globToRegExp(pattern: string): RegExp {
  let out = "";
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i];
    if (ch === "*") {
      out += "[\\s\\S]*";
    } else if (ch === "?") {
      out += "[\\s\\S]";
    } else if (ch === "[") {
      const end = findClass(pattern, i);
      if (end < 0) {
        out += "\\[";
        continue;
      }
      let body = pattern.slice(i + 1, end);
      let negate = false;
      if (body.startsWith("!")) {
        negate = true;
        body = body.slice(1);
      }
      body = body.replace(/\\/g, "\\\\").replace(/\^/g, "\\^").replace(/\]/g, "\\]");
      out += negate ? `[^${body}]` : `[${body}]`;
      i = end;
    } else {
      out += ch.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
    }
  }
  return new RegExp(`^${out}$`, "u");
}

// Where the class opened at `start` closes, as fnmatch reads it: a "]" right after
// "[" or "[!" is a member, not the end. -1 when it never closes ("[" is then literal).
function findClass(pattern: string, start: number): number {
  let j = start + 1;
  if (pattern[j] === "!") j++;
  if (pattern[j] === "]") j++;
  return pattern.indexOf("]", j);
}

/** Whether one resource pattern covers `resource` for a caller with `agentId`. */
export function resourceMatches(pattern: string, resource: string, agentId: string): boolean {
  if (pattern.includes("{agent}")) {
    // "{agent}" is the caller's agent id, literally; no agent id matches nothing.
    if (!agentId) return false;
    const parts = pattern.split("{agent}").map((part) => globToRegExp(part).source.slice(1, -1));
    const literal = agentId.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
    return new RegExp(`^${parts.join(literal)}$`, "u").test(resource);
  }
  return globToRegExp(pattern).test(resource);
}

/** Whether `caller` may use `permission` on `resource` (a topic, ...). */
export function allows(caller: Caller | null, permission: string, resource: string): boolean {
  if (!caller) return false;
  return caller.grants.some(
    (grant) =>
      (grant.permission === "*" || grant.permission === permission) &&
      resourceMatches(grant.resource, resource, caller.agentId),
  );
}

/** The actions to offer on a held packet of `topic`. */
export function heldActions(caller: Caller | null, topic: string): { approve: boolean; deny: boolean } {
  const may = allows(caller, "packets.approve", topic);
  return { approve: may, deny: may };
}

/** The actions to offer on carcel entries of `topic`. */
export function carcelActions(
  caller: Caller | null,
  topic: string,
): { requeue: boolean; purge: boolean } {
  return {
    requeue: allows(caller, "carcel.requeue", topic),
    purge: allows(caller, "carcel.purge", topic),
  };
}
