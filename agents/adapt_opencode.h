/*
 * adapt_opencode.h - the OpenCode adapter (opencode-ai, `opencode serve` through a driver).
 *
 * Runs `BUN_BE_BUN=1 opencode agents/bundled/opencode-serve.mjs opencode` (the OpenCode binary
 * acting as Bun runs the driver, which starts `opencode serve` on the sandbox's loopback and
 * prints its events as `opencode run --format json` lines plus text deltas) with the prompt
 * on stdin, its XDG directories in the per-sandbox agent home, and the configuration in
 * OPENCODE_CONFIG_CONTENT: with an api_base, a custom OpenAI-compatible provider (Chat
 * Completions) named "sessiond" whose key is read from a secret environment variable. Maps its
 * JSON events onto the agent protocol: tool_use -> tool_call + tool_result; text_delta ->
 * output (a whole text only for a part not streamed); step_finish -> usage and turns; error ->
 * error (the API's own message); a clean exit -> done. Thread notes: see agents.h.
 */
#ifndef SESSIOND_ADAPT_OPENCODE_H
#define SESSIOND_ADAPT_OPENCODE_H

#include "agents/agents.h"

extern const struct agent_adapter adapt_opencode;

#endif
