/*
 * event.c - the one event serializer (see event.h for the shape). Thread safe.
 */
#include "storage/event.h"

#include "common/buf.h"
#include "common/clock.h"

#include <string.h>

int event_serialize(struct buf *out, int64_t seq, const char *type, int64_t ts_ms,
                    const char *author_id, const char *author_name, const char *data_json)
{
    char ts[32];
    int rc;
    clock_iso8601(ts_ms, ts, sizeof(ts));
    rc = buf_printf(out, "{\"seq\":%lld,\"type\":", (long long)seq);
    if (!rc) {
        rc = buf_json_str(out, type, strlen(type));
    }
    if (!rc) {
        rc = buf_printf(out, ",\"ts\":\"%s\",\"author\":", ts);
    }
    if (!rc && author_id) {
        rc = buf_puts(out, "{\"id\":");
        if (!rc) {
            rc = buf_json_str(out, author_id, strlen(author_id));
        }
        if (!rc) {
            rc = buf_puts(out, ",\"name\":");
        }
        if (!rc && author_name) {
            rc = buf_json_str(out, author_name, strlen(author_name));
        } else if (!rc) {
            rc = buf_puts(out, "null");
        }
        if (!rc) {
            rc = buf_putc(out, '}');
        }
    } else if (!rc) {
        rc = buf_puts(out, "null");
    }
    if (!rc) {
        rc = buf_puts(out, ",\"data\":");
    }
    if (!rc) {
        rc = buf_puts(out, data_json && *data_json ? data_json : "{}");
    }
    if (!rc) {
        rc = buf_putc(out, '}');
    }
    return rc;
}
