/*
 * adapt_opencode.h - the OpenCode adapter (opencode-ai, `opencode run --format json`).
 *
 * Runs `opencode run --format json --auto` with the prompt on stdin, its XDG directories in
 * the per-sandbox agent home, and the configuration in OPENCODE_CONFIG_CONTENT: with an
 * api_base, a custom OpenAI-compatible provider (Chat Completions) named "sessiond" whose key
 * is read from a secret environment variable. Maps its JSON events onto the agent protocol:
 * tool_use -> tool_call + tool_result; text -> output; step_finish -> usage and turns;
 * error -> error (the API's own message); a clean exit -> done. Thread notes: see agents.h.
 */
#ifndef SESSIOND_ADAPT_OPENCODE_H
#define SESSIOND_ADAPT_OPENCODE_H

#include "agents.h"

extern const struct agent_adapter adapt_opencode;

#endif
