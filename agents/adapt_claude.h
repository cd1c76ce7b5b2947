/*
 * adapt_claude.h - the Claude Code adapter (@anthropic-ai/claude-code, `claude -p`).
 *
 * Runs `claude -p --output-format stream-json --verbose --include-partial-messages
 * --dangerously-skip-permissions --bare --model M --no-session-persistence` with the prompt on
 * stdin, CLAUDE_CONFIG_DIR in the per-sandbox agent home, ANTHROPIC_BASE_URL from api_base and
 * ANTHROPIC_API_KEY as a secret, and maps its stream-json lines onto the agent protocol:
 * stream_event text_delta -> output; assistant tool_use -> tool_call; user tool_result ->
 * tool_result; result -> done (usage, num_turns) or error (is_error: the CLI's own message).
 * Thread notes: see agents.h.
 */
#ifndef SESSIOND_ADAPT_CLAUDE_H
#define SESSIOND_ADAPT_CLAUDE_H

#include "agents/agents.h"

extern const struct agent_adapter adapt_claude;

#endif
