/*
 * jsonx.h - jansson helpers for validating client JSON with clear messages.
 *
 * The field getters return 0 when the field is absent (out left unchanged) or present with
 * the right type, ERR_INVALID with a message in msg (size n) when the type is wrong.
 * Pure helpers; thread safe on distinct objects.
 */
#ifndef SESSIOND_JSONX_H
#define SESSIOND_JSONX_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/** Parse a request body that must be a JSON object. *out is a new reference (caller decrefs). */
int jx_parse_object(const char *data, size_t len, json_t **out, char *msg, size_t n);
int jx_str(json_t *obj, const char *key, const char **out, char *msg, size_t n);
int jx_int(json_t *obj, const char *key, int64_t *out, char *msg, size_t n);
int jx_bool(json_t *obj, const char *key, int *out, char *msg, size_t n);
/** An object-valued field; *out is a borrowed reference. */
int jx_obj(json_t *obj, const char *key, json_t **out, char *msg, size_t n);
/** An array-valued field; *out is a borrowed reference. */
int jx_arr(json_t *obj, const char *key, json_t **out, char *msg, size_t n);
/** Compact, key-order-preserving dump; the caller frees. Never NULL (aborts on OOM). */
char *jx_dump(const json_t *v);

#endif
