// model-server.mjs - a scripted model server for the coding-agent CLI tests (issue 7).
//
// Speaks three dialects with SSE, enough for the real CLIs:
//   POST .../v1/messages          Anthropic Messages      (Claude Code)
//   POST .../responses            OpenAI Responses        (Codex)
//   POST .../chat/completions     OpenAI Chat Completions (OpenCode)
// It has no hidden state: every reply is chosen from the conversation in the request.
//   - no tool result yet                → a shell tool call  (creates shell.txt)
//   - one tool result                   → an edit/write tool call (creates edit.txt)
//   - two or more tool results          → the final text, streamed in several deltas
// Directives in the prompt (the first user message) change the script:
//   [[fail:NNN]]      answer every request with HTTP NNN and an error body
//   [[cmd:SHELL]]     run SHELL as the shell step (instead of creating shell.txt)
//   [[shell-only]]    skip the edit step (shell, then final text)
//   [[text-only]]     answer with the final text at once (no tools)
//   [[slow:MS]]       wait MS ms between text deltas (for cancel tests)
// Usage:  node tests/model-server.mjs [--port N] [--port-file F] [--log F]
// or import { startModelServer } and call it with the same options.
import http from 'node:http';
import fs from 'node:fs';

const SHELL_FILE = 'shell.txt';
const EDIT_FILE = 'edit.txt';
export const FINAL_TEXT = ['All done: ', 'created shell.txt ', 'with the shell tool ', 'and edit.txt ', 'with the edit tool.'];

function directives(prompt) {
    const d = { fail: 0, cmd: null, shellOnly: false, textOnly: false, slow: 0 };
    let m = /\[\[fail:(\d{3})\]\]/.exec(prompt);
    if (m) d.fail = Number(m[1]);
    m = /\[\[cmd:([\s\S]*?)\]\]/.exec(prompt);
    if (m) d.cmd = m[1];
    m = /\[\[slow:(\d+)\]\]/.exec(prompt);
    if (m) d.slow = Number(m[1]);
    d.shellOnly = prompt.includes('[[shell-only]]');
    d.textOnly = prompt.includes('[[text-only]]');
    return d;
}

// ---- reading the conversation of each dialect -------------------------------------------

function textOf(content) {
    if (typeof content === 'string') return content;
    if (!Array.isArray(content)) return '';
    return content.map((c) => (typeof c === 'string' ? c : c.text || '')).join('');
}

// Returns { prompt, toolResults: number, tools: [names] }
function readAnthropic(body) {
    const msgs = body.messages || [];
    let prompt = '';
    let toolResults = 0;
    for (const m of msgs) {
        if (m.role !== 'user') continue;
        if (Array.isArray(m.content)) {
            for (const c of m.content) {
                if (c.type === 'tool_result') toolResults++;
                else if (c.type === 'text' && !prompt && !c.text.startsWith('<system-reminder>')) prompt = c.text;
            }
        } else if (!prompt) {
            prompt = m.content;
        }
    }
    // Claude Code may prefix reminders; the prompt is also somewhere in the whole first message.
    if (!prompt && msgs.length) prompt = textOf(msgs[0].content);
    const all = msgs.filter((m) => m.role === 'user').map((m) => textOf(m.content)).join('\n');
    return { prompt: prompt + '\n' + all, toolResults, tools: (body.tools || []).map((t) => t.name) };
}

function readResponses(body) {
    let input = body.input;
    if (typeof input === 'string') input = [{ role: 'user', content: input }];
    let prompt = '';
    let toolResults = 0;
    for (const it of input || []) {
        if (it.type === 'function_call_output' || it.type === 'custom_tool_call_output') toolResults++;
        else if ((it.type === 'message' || !it.type) && it.role === 'user') {
            prompt += textOf(it.content).replace(/^\s*$/, '') + '\n';
        }
    }
    const tools = (body.tools || []).map((t) => t.name || (t.function && t.function.name) || t.type);
    return { prompt, toolResults, tools };
}

function readChat(body) {
    let prompt = '';
    let toolResults = 0;
    for (const m of body.messages || []) {
        if (m.role === 'tool') toolResults++;
        else if (m.role === 'user') prompt += textOf(m.content) + '\n';
    }
    return { prompt, toolResults, tools: (body.tools || []).map((t) => (t.function ? t.function.name : t.name)) };
}

// ---- the script ----------------------------------------------------------------------------

function pick(tools, names) {
    for (const n of names) if (tools.includes(n)) return n;
    return null;
}

// Decide the next step: {kind:'tool', name, input, id} or {kind:'text', chunks}
function decide(dialect, conv, d) {
    const step = d.textOnly ? 99 : conv.toolResults;
    const id = `call_${dialect}_${step}`;
    const shellCmd = d.cmd || `echo made-by-shell > ${SHELL_FILE}`;
    const editContent = 'written by the edit tool\n';
    if (step === 0) {
        if (dialect === 'anthropic') {
            return { kind: 'tool', id: 'toolu_' + id, name: pick(conv.tools, ['Bash']) || 'Bash', input: { command: shellCmd, description: 'Run the scripted shell step' } };
        }
        if (dialect === 'responses') {
            const n = pick(conv.tools, ['shell', 'exec_command', 'shell_command', 'local_shell']) || 'shell';
            let input;
            if (n === 'exec_command') input = { cmd: shellCmd };
            else if (n === 'shell_command') input = { command: shellCmd };
            else input = { command: ['bash', '-lc', shellCmd] };
            return { kind: 'tool', id, name: n, input };
        }
        return { kind: 'tool', id, name: pick(conv.tools, ['bash']) || 'bash', input: { command: shellCmd, description: 'Run the scripted shell step' } };
    }
    if (step === 1 && !d.shellOnly) {
        if (dialect === 'anthropic') {
            // Claude Code --bare offers Bash, Edit and Read; Edit with an empty old_string creates a file.
            const n = pick(conv.tools, ['Write', 'Edit']) || 'Edit';
            const fp = `${conv.cwd || '/workspace'}/${EDIT_FILE}`;
            const input = n === 'Write' ? { file_path: fp, content: editContent } : { file_path: fp, old_string: '', new_string: editContent };
            return { kind: 'tool', id: 'toolu_' + id, name: n, input };
        }
        if (dialect === 'responses') {
            const patch = `*** Begin Patch\n*** Add File: ${EDIT_FILE}\n+${editContent.trimEnd()}\n*** End Patch\n`;
            return { kind: 'tool', id, name: 'apply_patch', custom: conv.customApplyPatch, input: conv.customApplyPatch ? patch : { input: patch } };
        }
        return { kind: 'tool', id, name: pick(conv.tools, ['write']) || 'write', input: { filePath: `${conv.cwd || '/workspace'}/${EDIT_FILE}`, content: editContent } };
    }
    return { kind: 'text', chunks: FINAL_TEXT };
}

// ---- SSE writers ---------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function sseHead(res) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
}
function sse(res, event, data) {
    if (event) res.write(`event: ${event}\n`);
    res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
}

function usageFor(body) {
    return { input: Math.max(1, Math.floor(JSON.stringify(body).length / 4) % 100000), output: 17 };
}

async function replyAnthropic(res, body, step, d, onDelta) {
    const u = usageFor(body);
    const msgId = 'msg_scripted_' + (step.id || 'final');
    sseHead(res);
    sse(res, 'message_start', { type: 'message_start', message: { id: msgId, type: 'message', role: 'assistant', model: body.model, content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: u.input, output_tokens: 1 } } });
    if (step.kind === 'tool') {
        sse(res, 'content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'tool_use', id: step.id, name: step.name, input: {} } });
        const js = JSON.stringify(step.input);
        const half = Math.floor(js.length / 2);
        sse(res, 'content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'input_json_delta', partial_json: js.slice(0, half) } });
        sse(res, 'content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'input_json_delta', partial_json: js.slice(half) } });
        sse(res, 'content_block_stop', { type: 'content_block_stop', index: 0 });
        sse(res, 'message_delta', { type: 'message_delta', delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: { output_tokens: u.output } });
    } else {
        sse(res, 'content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } });
        for (const c of step.chunks) {
            if (d.slow) await sleep(d.slow);
            sse(res, 'content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: c } });
            if (onDelta) onDelta(c, Date.now());
        }
        sse(res, 'content_block_stop', { type: 'content_block_stop', index: 0 });
        sse(res, 'message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: u.output } });
    }
    sse(res, 'message_stop', { type: 'message_stop' });
    res.end();
}

async function replyResponses(res, body, step, d, onDelta) {
    const u = usageFor(body);
    const respId = 'resp_scripted_' + (step.id || 'final');
    const resp = { id: respId, object: 'response', created_at: Math.floor(Date.now() / 1000), model: body.model, status: 'in_progress', output: [] };
    sseHead(res);
    let seq = 0;
    const ev = (type, o) => sse(res, type, { type, sequence_number: seq++, ...o });
    ev('response.created', { response: resp });
    ev('response.in_progress', { response: resp });
    let item;
    if (step.kind === 'tool') {
        if (step.custom) {
            item = { type: 'custom_tool_call', id: 'ctc_' + step.id, call_id: step.id, name: step.name, input: step.input, status: 'completed' };
            ev('response.output_item.added', { output_index: 0, item: { ...item, input: '', status: 'in_progress' } });
            ev('response.custom_tool_call_input.delta', { output_index: 0, item_id: item.id, delta: step.input });
            ev('response.custom_tool_call_input.done', { output_index: 0, item_id: item.id, input: step.input });
        } else {
            const args = JSON.stringify(step.input);
            item = { type: 'function_call', id: 'fc_' + step.id, call_id: step.id, name: step.name, arguments: args, status: 'completed' };
            ev('response.output_item.added', { output_index: 0, item: { ...item, arguments: '', status: 'in_progress' } });
            ev('response.function_call_arguments.delta', { output_index: 0, item_id: item.id, delta: args });
            ev('response.function_call_arguments.done', { output_index: 0, item_id: item.id, arguments: args });
        }
        ev('response.output_item.done', { output_index: 0, item });
    } else {
        const text = step.chunks.join('');
        item = { type: 'message', id: 'msg_' + respId, status: 'completed', role: 'assistant', content: [{ type: 'output_text', text, annotations: [] }] };
        ev('response.output_item.added', { output_index: 0, item: { ...item, status: 'in_progress', content: [] } });
        ev('response.content_part.added', { output_index: 0, item_id: item.id, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } });
        for (const c of step.chunks) {
            if (d.slow) await sleep(d.slow);
            ev('response.output_text.delta', { output_index: 0, item_id: item.id, content_index: 0, delta: c });
            if (onDelta) onDelta(c, Date.now());
        }
        ev('response.output_text.done', { output_index: 0, item_id: item.id, content_index: 0, text });
        ev('response.content_part.done', { output_index: 0, item_id: item.id, content_index: 0, part: item.content[0] });
        ev('response.output_item.done', { output_index: 0, item });
    }
    ev('response.completed', {
        response: { ...resp, status: 'completed', output: [item], usage: { input_tokens: u.input, input_tokens_details: { cached_tokens: 0 }, output_tokens: u.output, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: u.input + u.output } },
    });
    res.end();
}

async function replyChat(res, body, step, d, onDelta) {
    const u = usageFor(body);
    const id = 'chatcmpl_scripted_' + (step.id || 'final');
    const created = Math.floor(Date.now() / 1000);
    const chunk = (delta, finish) => sse(res, null, { id, object: 'chat.completion.chunk', created, model: body.model, choices: [{ index: 0, delta, finish_reason: finish || null }] });
    sseHead(res);
    chunk({ role: 'assistant', content: '' });
    if (step.kind === 'tool') {
        const args = JSON.stringify(step.input);
        const half = Math.floor(args.length / 2);
        chunk({ tool_calls: [{ index: 0, id: step.id, type: 'function', function: { name: step.name, arguments: args.slice(0, half) } }] });
        chunk({ tool_calls: [{ index: 0, function: { arguments: args.slice(half) } }] });
        chunk({}, 'tool_calls');
    } else {
        for (const c of step.chunks) {
            if (d.slow) await sleep(d.slow);
            chunk({ content: c });
            if (onDelta) onDelta(c, Date.now());
        }
        chunk({}, 'stop');
    }
    sse(res, null, { id, object: 'chat.completion.chunk', created, model: body.model, choices: [], usage: { prompt_tokens: u.input, completion_tokens: u.output, total_tokens: u.input + u.output } });
    sse(res, null, '[DONE]');
    res.end();
}

function errorBody(dialect, status) {
    const msg = `scripted model error ${status}: this request was refused by the test model server`;
    if (dialect === 'anthropic') return { type: 'error', error: { type: status === 401 ? 'authentication_error' : 'invalid_request_error', message: msg } };
    return { error: { message: msg, type: 'invalid_request_error', code: 'scripted_error', param: null } };
}

// ---- the server ------------------------------------------------------------------------------

export function startModelServer(opts = {}) {
    const log = opts.log ? fs.createWriteStream(opts.log, { flags: 'a' }) : null;
    const server = http.createServer((req, res) => {
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', async () => {
            const raw = Buffer.concat(chunks).toString('utf8');
            let body = {};
            try {
                body = raw ? JSON.parse(raw) : {};
            } catch {
                body = {};
            }
            const path = req.url.split('?')[0];
            let dialect = null;
            if (req.method === 'POST' && /\/messages$/.test(path)) dialect = 'anthropic';
            else if (req.method === 'POST' && /\/responses$/.test(path)) dialect = 'responses';
            else if (req.method === 'POST' && /\/chat\/completions$/.test(path)) dialect = 'chat';
            if (log) log.write(JSON.stringify({ t: Date.now(), method: req.method, url: req.url, dialect, headers: req.headers, body: opts.logBodies ? body : undefined }) + '\n');
            if (!dialect) {
                if (/\/models$/.test(path)) {
                    res.writeHead(200, { 'content-type': 'application/json' });
                    res.end(JSON.stringify({ object: 'list', data: [] }));
                    return;
                }
                // Claude Code sends HEAD / to check the base URL; everything else: a 404.
                res.writeHead(req.method === 'HEAD' || path === '/' ? 200 : 404, { 'content-type': 'application/json' });
                res.end(req.method === 'HEAD' ? undefined : JSON.stringify({ error: { message: 'not found' } }));
                return;
            }
            let conv;
            if (dialect === 'anthropic') conv = readAnthropic(body);
            else if (dialect === 'responses') conv = readResponses(body);
            else conv = readChat(body);
            const sys = JSON.stringify(body.system || body.instructions || '') + JSON.stringify(body.messages ? body.messages.filter((m) => m.role === 'system') : '');
            const cwdm = /(?:working directory|CWD|cwd)[^/\n]{0,40}(\/[^\s"'<>\\]+)/i.exec(sys + JSON.stringify(body.input || ''));
            conv.cwd = cwdm ? cwdm[1] : null;
            conv.customApplyPatch = dialect === 'responses' && (body.tools || []).some((t) => t.type === 'custom' && t.name === 'apply_patch');
            const d = directives(conv.prompt);
            if (d.fail) {
                res.writeHead(d.fail, { 'content-type': 'application/json' });
                res.end(JSON.stringify(errorBody(dialect, d.fail)));
                return;
            }
            // Claude Code asks for short side answers (titles, summaries) without tools: answer with text.
            // Side requests without tools (Claude Code's and OpenCode's titles and summaries) get a short text.
            const step = dialect !== 'responses' && !(body.tools || []).length ? { kind: 'text', chunks: ['Scripted title'] } : decide(dialect, conv, d);
            try {
                // opts.onDelta(text, ms): called as each final-text delta is sent (benchmarks).
                const od = step.chunks === FINAL_TEXT ? opts.onDelta : null;
                if (dialect === 'anthropic') await replyAnthropic(res, body, step, d, od);
                else if (dialect === 'responses') await replyResponses(res, body, step, d, od);
                else await replyChat(res, body, step, d, od);
            } catch {
                res.destroy();
            }
        });
    });
    return new Promise((resolve) => {
        server.listen(opts.port || 0, opts.host || '127.0.0.1', () => {
            const port = server.address().port;
            resolve({ port, url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(() => r())), server });
        });
    });
}

if (import.meta.url === `file://${process.argv[1]}`) {
    const args = process.argv.slice(2);
    const opt = (n) => {
        const i = args.indexOf(n);
        return i >= 0 ? args[i + 1] : undefined;
    };
    const s = await startModelServer({ port: Number(opt('--port') || 0), log: opt('--log'), logBodies: args.includes('--log-bodies') });
    if (opt('--port-file')) fs.writeFileSync(opt('--port-file'), String(s.port));
    process.stdout.write(`model-server listening on ${s.url}\n`);
}
