/*
 * fuzz_adapt_codex.c - the codex adapter's parser over hostile CLI output (see adapt_harness.h).
 */
#include "agents/adapt_codex.h"

#define FUZZ_ADAPTER adapt_codex
#include "adapt_harness.h"
