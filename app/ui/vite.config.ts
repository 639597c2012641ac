import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";

// The built UI is embedded by the Tauri shell and served by `flyt serve --ui`, so it uses
// relative asset paths and never loads anything from the network.
export default defineConfig({
  base: "./",
  plugins: [react()],
  build: { outDir: "dist", target: "es2022", sourcemap: false },
  server: { host: "127.0.0.1" },
  test: { include: ["src/**/*.test.ts", "src/**/*.test.tsx"], environment: "node" },
});
