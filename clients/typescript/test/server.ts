/**
 * A real `packetbus serve` for the tests: the repository's Python venv's server (or
 * $PACKETBUS_BIN), on a free loopback port, with an embedded Valkey in a fresh data directory.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

// dist/test/server.js -> the repository root is four levels up.
const DEFAULT_BIN = fileURLToPath(new URL("../../../../.venv/bin/packetbus", import.meta.url));

export interface RunningServer {
  /** "127.0.0.1:PORT" */
  readonly target: string;
  /** Its data directory; with the embedded Valkey, the store listens on run/valkey.sock there. */
  readonly dataDir: string;
  stop(): Promise<void>;
}

export interface ServerOptions {
  /** The address to listen on (default "127.0.0.1:0", a free port). */
  readonly listen?: string;
  /** Another server's store (e.g. `unix://<its dataDir>/run/valkey.sock`) instead of an
   * embedded Valkey of its own. */
  readonly redisUrl?: string;
}

/** Start a server, with `extraArgs` after the listen address and data directory (e.g.
 * ["--tls-cert", file, "--tls-key", file] for TLS; see `packetbus serve --help`); resolves once
 * it prints "serving on 127.0.0.1:PORT". Rejects with what it printed if it exits first or is
 * not serving within 60 s. */
export async function startServer(
  extraArgs: readonly string[] = [],
  options: ServerOptions = {},
): Promise<RunningServer> {
  const dataDir = mkdtempSync(join(tmpdir(), "packetbus-ts-"));
  const bin = process.env["PACKETBUS_BIN"] ?? DEFAULT_BIN;
  const store = options.redisUrl === undefined ? [] : ["--redis-url", options.redisUrl];
  const listen = options.listen ?? "127.0.0.1:0";
  const child = spawn(bin, ["serve", "--listen", listen, "--data-dir", dataDir, ...store, ...extraArgs], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const printed: string[] = [];
  const target = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server not serving in 60 s:\n${printed.join("\n")}`)), 60_000);
    const onLine = (line: string): void => {
      printed.push(line);
      const match = /serving on (127\.0\.0\.1:\d+)/.exec(line);
      if (match?.[1] !== undefined) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    createInterface({ input: child.stdout! }).on("line", onLine);
    createInterface({ input: child.stderr! }).on("line", onLine);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${printed.join("\n")}`));
    });
  });
  return {
    target,
    dataDir,
    stop: () => stopServer(child, dataDir),
  };
}

async function stopServer(child: ChildProcess, dataDir: string): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGTERM");
    await exited;
  }
  rmSync(dataDir, { recursive: true, force: true });
}

/** A loopback port free right now (for a server stopped and started again on the same one). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}
