/*
 * extension.c - the DOM-selection context of the browser extension (see extension.h):
 * validation, and its `dom_selection` artifact written inside the message's transaction.
 * Thread context: any (HTTP pool threads); no state of its own.
 */
#include "server/extension.h"

#include "common/err.h"
#include "common/jsonx.h"
#include "common/util.h"
#include "common/xmem.h"
#include "storage/artifacts.h"
#include "storage/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t utf8_len(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    }
    return c;
}

int ext_is_dom_selection(json_t *context)
{
    if (!json_is_object(context)) {
        return 0;
    }
    const char *t = json_string_value(json_object_get(context, "type"));
    if (t) {
        return strcmp(t, "dom_selection") == 0;
    }
    return json_is_array(json_object_get(context, "elements"));
}

int ext_context_check(json_t *context, char *msg, size_t n)
{
    if (!ext_is_dom_selection(context)) {
        return 0;
    }
    json_t *els = json_object_get(context, "elements");
    if (!json_is_array(els)) {
        snprintf(msg, n, "context.elements must be an array");
        return ERR_INVALID;
    }
    if (json_array_size(els) > EXT_MAX_ELEMENTS) {
        snprintf(msg, n, "context.elements has more than %d elements", EXT_MAX_ELEMENTS);
        return ERR_INVALID;
    }
    size_t i;
    json_t *e;
    json_array_foreach(els, i, e)
    {
        json_t *tag = json_object_get(e, "tag");
        json_t *text = json_object_get(e, "text");
        json_t *rect = json_object_get(e, "rect");
        json_t *classes = json_object_get(e, "classes");
        if (!json_is_object(e) || !json_is_string(tag)) {
            snprintf(msg, n, "context.elements[%zu] must be an object with a string 'tag'", i);
            return ERR_INVALID;
        }
        if (text && !json_is_null(text) &&
            (!json_is_string(text) ||
             utf8_len(json_string_value(text), json_string_length(text)) > EXT_MAX_TEXT)) {
            snprintf(msg, n,
                     "context.elements[%zu].text must be a string of at most %d "
                     "characters",
                     i, EXT_MAX_TEXT);
            return ERR_INVALID;
        }
        if (classes && !json_is_null(classes) && !json_is_array(classes) &&
            !json_is_string(classes)) {
            snprintf(msg, n, "context.elements[%zu].classes must be an array", i);
            return ERR_INVALID;
        }
        if (rect && !json_is_null(rect)) {
            static const char *const keys[] = {"x", "y", "width", "height"};
            for (int k = 0; k < 4; k++) {
                json_t *v = json_object_get(rect, keys[k]);
                if (!json_is_object(rect) || (v && !json_is_number(v))) {
                    snprintf(msg, n, "context.elements[%zu].rect.%s must be a number", i, keys[k]);
                    return ERR_INVALID;
                }
            }
        }
    }
    return 0;
}

int ext_context_store(struct sess_tx *tx, const char *context_json, const char *message_id,
                      const struct author *a)
{
    if (!context_json) {
        return 0;
    }
    json_t *ctx = json_loads(context_json, 0, NULL);
    int is_sel = ext_is_dom_selection(ctx);
    size_t nel = json_array_size(json_object_get(ctx, "elements"));
    const char *url = json_string_value(json_object_get(ctx, "url"));
    char *url_copy = url ? xstrdup(url) : NULL;
    json_decref(ctx);
    if (!is_sel) {
        free(url_copy);
        return 0;
    }
    char *aid = util_new_id("a_");
    size_t len = strlen(context_json);
    int rc = ERR_DB;
    struct artifact_row row = {
        .id = aid,
        .type = "dom_selection",
        .path = "dom_selection.json",
        .mime = "application/json",
        .data = context_json,
        .len = len,
        .author_id = a ? a->id : NULL,
    };
    rc = artifacts_insert(tx, &row);
    if (rc) {
        goto out;
    }
    json_t *d = json_pack("{s:s,s:s,s:s,s:s,s:I,s:s?,s:I,s:s?}", "artifact_id", aid, "type",
                          "dom_selection", "path", "dom_selection.json", "mime", "application/json",
                          "size", (json_int_t)len, "message_id", message_id, "elements",
                          (json_int_t)nel, "url", url_copy);
    char *data = jx_dump(d);
    json_decref(d);
    rc = sess_tx_append(tx, "artifact.created", a, data, NULL);
    free(data);
out:
    free(url_copy);
    free(aid);
    return rc;
}
