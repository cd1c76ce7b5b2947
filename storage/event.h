/*
 * event.h - the one serializer of the event object.
 *
 * Every event leaves the server (REST, WebSocket, export) in exactly this shape:
 *   {"seq":1,"type":"message","ts":"2026-11-23T12:00:00.123Z",
 *    "author":{"id":"token:alice","name":"Alice"}|null,"data":{...}}
 * data_json is stored already serialized and is copied verbatim. Thread safe.
 */
#ifndef SESSIOND_EVENT_H
#define SESSIOND_EVENT_H

#include <stdint.h>

struct buf;

/** Append the event object to out. author_id NULL -> "author":null. data_json NULL -> {}. */
int event_serialize(struct buf *out, int64_t seq, const char *type, int64_t ts_ms,
                    const char *author_id, const char *author_name, const char *data_json);

#endif
