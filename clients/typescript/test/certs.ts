/**
 * Real certificates for the TLS tests, made with the `openssl` CLI in a fresh directory: a CA, a
 * server certificate for 127.0.0.1/localhost, and a client certificate whose SPIFFE ID (URI
 * SAN) is the caller's identity under mutual TLS. EC P-256 keys: quick to make.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCerts {
  readonly dir: string;
  readonly caFile: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** Another CA, which signed nothing the server presents. */
  readonly otherCaFile: string;
  remove(): void;
}

function openssl(dir: string, ...args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

function selfSignedCa(dir: string, name: string): void {
  openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", `${name}.key`, "-out", `${name}.pem`, "-days", "1", "-subj", `/CN=${name}`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
}

function issued(dir: string, name: string, extensions: string): void {
  openssl(dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
  writeFileSync(join(dir, `${name}.ext`), extensions);
  openssl(dir, "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key",
    "-set_serial", String(Date.now()), "-days", "1", "-out", `${name}.pem`, "-extfile", `${name}.ext`);
}

/** Make the certificates; `clientSpiffeId` is the client certificate's URI SAN. */
export function makeCerts(clientSpiffeId: string): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), "packetbus-ts-certs-"));
  selfSignedCa(dir, "ca");
  selfSignedCa(dir, "other-ca");
  issued(dir, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  issued(dir, "client", `subjectAltName=URI:${clientSpiffeId}\nextendedKeyUsage=clientAuth\n`);
  return {
    dir,
    caFile: join(dir, "ca.pem"),
    serverCert: join(dir, "server.pem"),
    serverKey: join(dir, "server.key"),
    clientCert: join(dir, "client.pem"),
    clientKey: join(dir, "client.key"),
    otherCaFile: join(dir, "other-ca.pem"),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
