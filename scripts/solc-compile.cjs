#!/usr/bin/env node
// Compiles Solidity with the pinned solc-js from npm (no native solc can be fetched here).
// Usage: node scripts/solc-compile.cjs JOB.json OUT.json
// JOB: {"sources": [unit names], "settings": {...standard-json settings...}}
// Source unit names resolve against the project root first, then node_modules/.
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const [jobPath, outPath] = process.argv.slice(2);
if (!jobPath || !outPath) {
  console.error("usage: solc-compile.cjs JOB.json OUT.json");
  process.exit(2);
}
const job = JSON.parse(fs.readFileSync(jobPath, "utf8"));
// A job may name another pinned solc-js (an npm alias such as "solc-0.6.6") for older pragmas.
const solc = require(job.compiler || "solc");

function locate(unit) {
  for (const base of [root, path.join(root, "node_modules")]) {
    const p = path.join(base, unit);
    if (fs.existsSync(p)) return p;
  }
  return null;
}

function findImports(unit) {
  const p = locate(unit);
  return p ? { contents: fs.readFileSync(p, "utf8") } : { error: `not found: ${unit}` };
}

const sources = {};
for (const unit of job.sources) {
  const p = locate(unit);
  if (!p) {
    console.error(`source not found: ${unit}`);
    process.exit(2);
  }
  sources[unit] = { content: fs.readFileSync(p, "utf8") };
}

const input = { language: "Solidity", sources, settings: job.settings };
const t0 = Date.now();
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
// Keep only what deployment needs: ABI, creation code, link references.
const contracts = {};
for (const [unit, byName] of Object.entries(output.contracts || {})) {
  for (const [name, c] of Object.entries(byName)) {
    if (!c.evm) continue;
    contracts[`${unit}:${name}`] = {
      abi: c.abi,
      bytecode: c.evm.bytecode.object,
      linkReferences: c.evm.bytecode.linkReferences || {},
      deployedBytecode: c.evm.deployedBytecode ? c.evm.deployedBytecode.object : undefined,
    };
  }
}
fs.writeFileSync(outPath, JSON.stringify({ solc: solc.version(), contracts }));
console.error(`compiled ${Object.keys(contracts).length} contracts in ${((Date.now() - t0) / 1000).toFixed(1)}s with solc ${solc.version()}`);
