// The console's bundle: built into the Python package (packetbus_console/static), so
// `pip install` alone gives a working console. Output names carry content hashes and
// nothing machine-specific (relative module ids, no timestamps, no source maps).
import preact from "@preact/preset-vite";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [preact()],
  base: "/",
  build: {
    outDir: "../packetbus_console/static",
    emptyOutDir: true,
    sourcemap: false,
    assetsDir: "assets",
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
