/*
 * adapt_codex.h - the Codex CLI adapter (@openai/codex, `codex exec --json`).
 *
 * Runs `codex exec --json --dangerously-bypass-approvals-and-sandbox --ephemeral
 * --skip-git-repo-check -c …config… -` with the prompt on stdin ("-"), CODEX_HOME in the
 * per-sandbox agent home and a custom model provider (Responses API) named "sessiond" whose
 * key comes from a secret environment variable. Maps its JSONL onto the agent protocol:
 * item.started/completed command_execution, file_change, mcp_tool_call, web_search ->
 * tool_call + tool_result; agent_message -> output; turn.completed -> done (usage);
 * turn.failed / error -> error (the API's own message). Thread notes: see agents.h.
 */
#ifndef SESSIOND_ADAPT_CODEX_H
#define SESSIOND_ADAPT_CODEX_H

#include "agents/agents.h"

extern const struct agent_adapter adapt_codex;

#endif
