// `npm run generate:check`: regenerate src/gen into a scratch copy of this package and fail
// (exit 1, listing the files) when it differs from the committed src/gen: the generated code
// must come from ../../protos as they are, never be edited by hand.
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const here = resolve(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "..");
const scratch = mkdtempSync(join(tmpdir(), "packetbus-ts-gen-"));
try {
  // Same depth below the repository as clients/typescript, so ../../protos still resolves.
  const copy = join(scratch, "clients", "typescript");
  cpSync(join(here, "buf.gen.yaml"), join(copy, "buf.gen.yaml"));
  cpSync(join(here, "..", "..", "protos"), join(scratch, "protos"), { recursive: true });
  cpSync(join(here, "..", "..", "buf.yaml"), join(scratch, "buf.yaml"));
  symlinkSync(join(here, "node_modules"), join(copy, "node_modules"));
  execFileSync(join(here, "node_modules", ".bin", "buf"), ["generate"], { cwd: copy, stdio: "inherit" });
  try {
    execFileSync("diff", ["-r", join(here, "src", "gen"), join(copy, "src", "gen")], { stdio: "inherit" });
  } catch {
    console.error("src/gen is stale or edited by hand: run `npm run generate` and commit it");
    process.exitCode = 1;
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
