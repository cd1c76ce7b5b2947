/*
 * fuzz_adapt_claude.c - the claude adapter's parser over hostile CLI output (see adapt_harness.h).
 */
#include "agents/adapt_claude.h"

#define FUZZ_ADAPTER adapt_claude
#include "adapt_harness.h"
