#!/usr/bin/env node
// Applies the four changes couchbackup/couchrestore 2.11.12 need against pouchdb-server 4.2.0
// (see /work/shared/test-services.md, "couchbackup / couchrestore against pouchdb-server") to
// an express-pouchdb install. Idempotent: each change carries a marker comment and is skipped
// when present. Exits non-zero, naming the file, when an anchor is not found.
//
// Usage: node patch-pouchdb.js NODE_MODULES_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const nm = process.argv[2];
if (!nm) {
  console.error('usage: patch-pouchdb.js NODE_MODULES_DIR');
  process.exit(2);
}
const routes = path.join(nm, 'express-pouchdb', 'lib', 'routes');

const patches = [
  {
    n: 1,
    file: 'session.js',
    why: 'couchbackup logs in with "username"; pouchdb-server reads only "name"',
    anchor: 'var name = req.body.name;',
    replacement: 'var name = req.body.name || req.body.username; /* cairn-bench patch 1 */',
  },
  {
    n: 2,
    file: 'bulk-get.js',
    why: 'an empty _bulk_get docs list was never answered',
    anchor: "    if (typeof req.db.bulkGet !== 'function') {",
    replacement:
      '    if (Array.isArray(req.body.docs) && req.body.docs.length === 0) { /* cairn-bench patch 2 */\n' +
      '      return utils.sendJSON(res, 200, {results: []});\n' +
      '    }\n' +
      "    if (typeof req.db.bulkGet !== 'function') {",
  },
  {
    n: 3,
    file: 'changes.js',
    why: '_changes lacked "pending", so couchbackup polled forever',
    anchor:
      '      req.db.changes(req.query).then(function (response) {\n' +
      '        utils.sendJSON(res, 200, response);',
    replacement:
      '      req.db.changes(req.query).then(function (response) {\n' +
      '        if (response.pending === undefined) { /* cairn-bench patch 3 */\n' +
      '          var lim = Number((req.query.query_params || {}).limit || 0);\n' +
      '          response.pending = (lim > 0 && response.results.length >= lim) ? 1 : 0;\n' +
      '        }\n' +
      '        utils.sendJSON(res, 200, response);',
  },
  {
    n: 4,
    file: 'db.js',
    why: 'GET /db lacked doc_del_count, so couchrestore refused the target',
    anchor: '      info.instance_start_time = startTime.toString();',
    replacement:
      '      info.instance_start_time = startTime.toString();\n' +
      '      if (info.doc_del_count === undefined) { info.doc_del_count = 0; } /* cairn-bench patch 4 */',
  },
];

let failed = 0;
for (const p of patches) {
  const f = path.join(routes, p.file);
  let src;
  try {
    src = fs.readFileSync(f, 'utf8');
  } catch (e) {
    console.error(`patch ${p.n}: cannot read ${f}: ${e.message}`);
    failed++;
    continue;
  }
  const marker = `/* cairn-bench patch ${p.n} */`;
  if (src.includes(marker)) {
    console.error(`patch ${p.n} (${p.file}): already applied`);
    continue;
  }
  const count = src.split(p.anchor).length - 1;
  if (count !== 1) {
    console.error(`patch ${p.n} (${p.file}): anchor found ${count} times, expected once; not patched`);
    failed++;
    continue;
  }
  src = src.replace(p.anchor, p.replacement);
  fs.writeFileSync(f, src);
  const check = fs.readFileSync(f, 'utf8');
  if (!check.includes(marker)) {
    console.error(`patch ${p.n} (${p.file}): written but the marker is missing`);
    failed++;
    continue;
  }
  console.error(`patch ${p.n} (${p.file}): applied (${p.why})`);
}
process.exit(failed ? 1 : 0);
