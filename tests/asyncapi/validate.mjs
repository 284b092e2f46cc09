// Parses the AsyncAPI document at the URL given as the first argument with the
// reference parser (@asyncapi/parser) and prints every diagnostic as one JSON
// line. Exit status: 0 when no diagnostic has severity error, 1 otherwise,
// 2 when the document could not be fetched.
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const url = process.argv[2];
let text;
try {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  text = await response.text();
} catch (error) {
  console.error(`cannot fetch ${url}: ${error.message}`);
  process.exit(2);
}

const parser = new Parser();
const { document, diagnostics } = await parser.parse(text);
const severities = { [DiagnosticSeverity.Error]: 'error', [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'information', [DiagnosticSeverity.Hint]: 'hint' };
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: severities[d.severity], code: d.code, message: d.message,
    path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
if (document === undefined || errors.length > 0) process.exit(1);
console.log(JSON.stringify({ parsed: true, version: document.version(),
  channels: document.channels().all().map((c) => c.id()),
  operations: document.operations().all().map((o) => o.id()),
  messages: document.allMessages().all().map((m) => m.id()) }));
