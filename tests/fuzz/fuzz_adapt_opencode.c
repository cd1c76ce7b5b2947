/*
 * fuzz_adapt_opencode.c - the opencode adapter's parser over hostile CLI output (see
 * adapt_harness.h).
 */
#include "agents/adapt_opencode.h"

#define FUZZ_ADAPTER adapt_opencode
#include "adapt_harness.h"
