// egress-forward.mjs - run a command with the sandbox's egress proxy reachable on loopback.
//
//   node egress-forward.mjs PORT SOCKET -- COMMAND ARGS...
//
// Inside a sandbox there is no network: sessiond's egress proxy is a Unix socket bound into
// the sandbox (SOCKET). Coding-agent CLIs only speak to proxies over TCP (HTTPS_PROXY=
// http://127.0.0.1:PORT), so this listens on 127.0.0.1:PORT, pipes every connection to
// SOCKET, and only then starts COMMAND (so its first request finds the proxy ready). It
// exits with COMMAND's status (or re-raises its signal); SIGTERM/SIGINT are passed on.
// stdin/stdout/stderr are COMMAND's. Runs on the node that is in the sandbox's system dirs.
import net from 'node:net';
import { spawn } from 'node:child_process';

const args = process.argv.slice(2);
const sep = args.indexOf('--');
if (sep !== 2 || args.length < 4) {
    process.stderr.write('usage: egress-forward.mjs PORT SOCKET -- COMMAND ARGS...\n');
    process.exit(2);
}
const port = Number(args[0]);
const sock = args[1];
const cmd = args.slice(3);

const server = net.createServer((c) => {
    const u = net.connect(sock);
    c.pipe(u);
    u.pipe(c);
    const end = () => {
        c.destroy();
        u.destroy();
    };
    c.on('error', end);
    u.on('error', end);
    c.on('close', end);
    u.on('close', end);
});
server.on('error', (e) => {
    // Another run in this sandbox may hold the port: it forwards to the same socket.
    if (e.code !== 'EADDRINUSE') {
        process.stderr.write(`egress-forward: ${e.message}\n`);
    }
    start();
});
server.listen(port, '127.0.0.1', start);

let child = null;
function start() {
    if (child) return;
    child = spawn(cmd[0], cmd.slice(1), { stdio: 'inherit' });
    child.on('error', (e) => {
        process.stderr.write(`egress-forward: cannot run ${cmd[0]}: ${e.message}\n`);
        process.exit(127);
    });
    child.on('exit', (code, signal) => {
        server.close();
        if (signal) {
            process.removeAllListeners(signal);
            process.kill(process.pid, signal);
            return;
        }
        process.exit(code ?? 1);
    });
}
for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
    process.on(s, () => {
        if (child) child.kill(s);
        else process.exit(128 + 15);
    });
}
