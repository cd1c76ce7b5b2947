// tests/integration/wscapture.mjs URL OUTFILE SECONDS - a WebSocket client for the bash tests:
// connects to URL, appends every frame it receives (raw text, one per line) to OUTFILE, writes
// OUTFILE.ready once open, and exits after SECONDS or when the server closes.
import fs from 'node:fs';
import WebSocket from 'ws';

const [url, out, secs] = process.argv.slice(2);
const ws = new WebSocket(url, { perMessageDeflate: false });
ws.on('open', () => fs.writeFileSync(`${out}.ready`, '1'));
ws.on('message', (data) => fs.appendFileSync(out, data.toString() + '\n'));
ws.on('close', () => process.exit(0));
ws.on('error', (e) => { console.error(`wscapture: ${e.message}`); process.exit(1); });
setTimeout(() => { ws.close(); process.exit(0); }, Number(secs || 20) * 1000);
