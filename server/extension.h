/*
 * extension.h - the browser extension's backend: the DOM-selection context a prompt carries.
 *
 * The extension (web/extension/) sends, with a prompt, a `context` object:
 *   {"type":"dom_selection","url":"…","title":"…","selection":{x,y,width,height},
 *    "elements":[{"tag","id","classes":[…],"text"(<=100 chars),"rect":{x,y,width,height},
 *                 "reactComponent"|null}, …]}
 * POST /v1/sessions/{id}/messages stores it with the message (messages.context_json) and,
 * through ext_context_store() inside the same transaction, as a `dom_selection` artifact with
 * an `artifact.created` event. The runner hands messages.context_json to the agent in the file
 * named by CONTEXT_FILE, outside /workspace, so it never lands in a commit.
 *
 * Thread safe (pure functions; ext_context_store runs inside the caller's group commit).
 */
#ifndef SESSIOND_EXTENSION_H
#define SESSIOND_EXTENSION_H

#include <jansson.h>
#include <stddef.h>

struct author;
struct sess_tx;

/** Limits of a DOM selection. */
#define EXT_MAX_ELEMENTS 500
#define EXT_MAX_TEXT     100 /* characters of text per element */

/** 1 if context is a DOM selection (type "dom_selection", or an "elements" array). */
int ext_is_dom_selection(json_t *context);

/** Validate a DOM selection: 0, or ERR_INVALID with a message (elements must be objects,
 * at most EXT_MAX_ELEMENTS, tag a string, text at most EXT_MAX_TEXT characters, rect numbers).
 * Anything that is not a DOM selection is accepted as is (0). */
int ext_context_check(json_t *context, char *msg, size_t n);

/** Inside a message's transaction: if context_json (may be NULL) is a DOM selection, store it
 * as a `dom_selection` artifact (application/json) tied to message_id and append its
 * `artifact.created` event. 0 when there is nothing to do. */
int ext_context_store(struct sess_tx *tx, const char *context_json, const char *message_id,
                      const struct author *a);

#endif
