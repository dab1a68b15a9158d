/**
 * How the client proves who the server is and who it is: TLS, mutual TLS, bearer tokens.
 * Mirrors the Python client's security settings (client/packetbus/_security.py), environment
 * variables included: PACKETBUS_TLS_CA, PACKETBUS_TLS_CERT, PACKETBUS_TLS_KEY,
 * PACKETBUS_TLS_SERVER_NAME (any one turns TLS on; each names a PEM file, the last a host name),
 * PACKETBUS_TOKEN (the token itself) and PACKETBUS_TOKEN_FILE (a file holding it, re-read when
 * it changes).
 */
import { readFileSync, statSync } from "node:fs";
import { isIP } from "node:net";
import type { SecureClientSessionOptions } from "node:http2";

import { Code, PacketbusError } from "./errors.js";

/**
 * TLS settings. `ca`/`caFile`: the CA (PEM) the server's certificate must chain to; neither:
 * the system's roots. `cert` + `key` (or `certFile` + `keyFile`): the client's own certificate
 * chain and private key, for a server that requires mutual TLS; both or neither. `serverName`:
 * the name the server's certificate must carry when it is not the target's host. Files are
 * read at each `Client.connect`, so a renewed certificate is used by the next connection.
 */
export interface TlsSettings {
  readonly ca?: string | Buffer;
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly serverName?: string;
}

/** A bearer token (a JWT), or a function returning the one to send now. */
export type Token = string | (() => string);

/**
 * The node:http2 session options for `tls`, files read now. Throws TypeError on a contradictory
 * combination (a PEM and a file for the same part; a certificate without its key or the
 * reverse); the fs error for a file it cannot read.
 */
export function tlsSessionOptions(tls: TlsSettings): SecureClientSessionOptions {
  for (const [name, pem, file] of [
    ["ca", tls.ca, tls.caFile],
    ["cert", tls.cert, tls.certFile],
    ["key", tls.key, tls.keyFile],
  ] as const) {
    if (pem !== undefined && file !== undefined) {
      throw new TypeError(`TlsSettings: give ${name} or ${name}File, not both`);
    }
  }
  if ((tls.cert === undefined && tls.certFile === undefined) !== (tls.key === undefined && tls.keyFile === undefined)) {
    throw new TypeError(
      "TlsSettings: a client certificate needs its key and a key its certificate (give both, or neither)",
    );
  }
  // Checked before any file is read: a contradiction is reported as such, not as a missing file.
  const ca = tls.caFile === undefined ? tls.ca : readFileSync(tls.caFile);
  const cert = tls.certFile === undefined ? tls.cert : readFileSync(tls.certFile);
  const key = tls.keyFile === undefined ? tls.key : readFileSync(tls.keyFile);
  return {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
    ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
  };
}

/** TLS settings from PACKETBUS_TLS_* (undefined when none is set: plain text). */
export function tlsFromEnv(env: NodeJS.ProcessEnv = process.env): TlsSettings | undefined {
  const caFile = env["PACKETBUS_TLS_CA"] || undefined;
  const certFile = env["PACKETBUS_TLS_CERT"] || undefined;
  const keyFile = env["PACKETBUS_TLS_KEY"] || undefined;
  const serverName = env["PACKETBUS_TLS_SERVER_NAME"] || undefined;
  if (caFile === undefined && certFile === undefined && keyFile === undefined && serverName === undefined) {
    return undefined;
  }
  return {
    ...(caFile === undefined ? {} : { caFile }),
    ...(certFile === undefined ? {} : { certFile }),
    ...(keyFile === undefined ? {} : { keyFile }),
    ...(serverName === undefined ? {} : { serverName }),
  };
}

/** The token from PACKETBUS_TOKEN, else a reader of PACKETBUS_TOKEN_FILE, else undefined. */
export function tokenFromEnv(env: NodeJS.ProcessEnv = process.env): Token | undefined {
  const token = env["PACKETBUS_TOKEN"];
  if (token) {
    return token;
  }
  const file = env["PACKETBUS_TOKEN_FILE"];
  return file ? tokenFile(file) : undefined;
}

/** A token read from `path` (trimmed), read again whenever the file's mtime or size changes, so
 * a token refreshed on disk (e.g. by a sidecar) is sent from the next call on. */
export function tokenFile(path: string): () => string {
  let seen = "";
  let token = "";
  return () => {
    const stat = statSync(path);
    const version = `${stat.mtimeMs}:${stat.size}`;
    if (version !== seen) {
      token = readFileSync(path, "utf8").trim();
      seen = version;
    }
    return token;
  };
}

/** Whether "host:port" never leaves the machine (a loopback address or localhost): a token may
 * go there in plain text, as gRPC's local credentials allow. */
export function isLocalTarget(target: string): boolean {
  const host = target.startsWith("[") ? target.slice(1, target.indexOf("]")) : target.replace(/:\d+$/, "");
  if (host === "localhost") {
    return true;
  }
  if (isIP(host) === 4) {
    return host.startsWith("127.");
  }
  return host === "::1";
}

/** Node's codes for a certificate the client could not verify, or a failed TLS handshake. */
const TLS_FAILURE = /^(ERR_SSL_|ERR_TLS_|UNABLE_TO_|CERT_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_MISMATCH|ERR_OSSL_)/;

/**
 * The error `Client.connect` reports for a failed first call. connect-node reports a TLS
 * verification failure as INTERNAL and a connection the server closes before answering (as a
 * mutual-TLS server does to a client without an acceptable certificate) as CANCELLED; gRPC
 * calls both UNAVAILABLE (nothing reached the service; another try, with other settings or
 * later, may succeed), which is what this answers for them. Anything else is as
 * PacketbusError.fromError says, with outcomeUnknown false: nothing was written.
 */
export function connectFailure(error: unknown): PacketbusError {
  const failure = PacketbusError.fromError(error, false);
  for (let cause: unknown = error; cause instanceof Error; cause = cause.cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (typeof code === "string" && TLS_FAILURE.test(code)) {
      return new PacketbusError(Code.Unavailable, `TLS with the server failed: ${cause.message} (${code})`, {
        cause: error,
      });
    }
  }
  if (failure.code === Code.Canceled) {
    return new PacketbusError(
      Code.Unavailable,
      `the server closed the connection before answering (${failure.message}); with mutual TLS, ` +
        "it may not accept the client's certificate (or its absence)",
      { cause: error },
    );
  }
  return failure;
}
