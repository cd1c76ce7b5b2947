/*
 * text.c - the pure parts, no I/O: request signature check (slack_verify), mention stripping,
 * mrkdwn escaping, repository scoring (slack_pick_repo) and the result's Block Kit blocks.
 */
#include "server/slack/slack_int.h"
/* ------------------------------------------------------------------------------------------ */
/* verification                                                                                */

int slack_verify(const char *secret, const char *ts, const char *sig, const char *body, size_t len,
                 int64_t now_s)
{
    if (!secret || !*secret) {
        return ERR_UNAVAILABLE;
    }
    if (!ts || !sig || strncmp(sig, "v0=", 3) != 0) {
        return ERR_AUTH;
    }
    int64_t t = 0;
    if (util_parse_i64(ts, &t) != 0) {
        return ERR_AUTH;
    }
    /* ts is the sender's, any int64: compare against the window's ends rather than computing
     * now_s - t, which overflows for timestamps near INT64_MIN and came out "fresh". */
    if (t < now_s - SLACK_MAX_SKEW_S || t > now_s + SLACK_MAX_SKEW_S) {
        return ERR_AUTH;
    }
    struct buf base;
    buf_init(&base, 0);
    buf_printf(&base, "v0:%s:", ts);
    buf_append(&base, body, len);
    char mac[65];
    util_hmac_sha256_hex(secret, strlen(secret), base.data, base.len, mac);
    buf_free(&base);
    /* Slack sends lowercase hex; compare the whole "v0=<hex>" in constant time. */
    char want[70];
    snprintf(want, sizeof(want), "v0=%s", mac);
    return util_ct_equal(want, strlen(want), sig, strlen(sig)) ? 0 : ERR_AUTH;
}

/* ------------------------------------------------------------------------------------------ */
/* text helpers                                                                                */

char *slack_strip_mention(const char *text)
{
    struct buf out;
    buf_init(&out, 0);
    buf_puts(&out, "");
    const char *p = text ? text : "";
    while (*p) {
        if (*p == '<') {
            const char *end = strchr(p, '>');
            if (end) {
                const char *in = p + 1;
                size_t n = (size_t)(end - in);
                const char *bar = memchr(in, '|', n);
                if (n > 0 && in[0] == '@') {
                    /* a user mention: dropped */
                } else if (n > 0 && (in[0] == '#' || in[0] == '!')) {
                    /* channel / special mention: keep the label if any */
                    if (bar) {
                        buf_append(&out, bar + 1, (size_t)(end - bar - 1));
                    }
                } else if (bar) {
                    buf_append(&out, bar + 1, (size_t)(end - bar - 1)); /* <url|label> */
                } else {
                    buf_append(&out, in, n); /* <url> */
                }
                p = end + 1;
                continue;
            }
        }
        buf_putc(&out, *p++);
    }
    /* Slack escapes &, <, > in message text. */
    struct buf dec;
    buf_init(&dec, 0);
    buf_puts(&dec, "");
    for (size_t i = 0; i < out.len;) {
        if (strncmp(out.data + i, "&amp;", 5) == 0) {
            buf_putc(&dec, '&');
            i += 5;
        } else if (strncmp(out.data + i, "&lt;", 4) == 0) {
            buf_putc(&dec, '<');
            i += 4;
        } else if (strncmp(out.data + i, "&gt;", 4) == 0) {
            buf_putc(&dec, '>');
            i += 4;
        } else {
            buf_putc(&dec, out.data[i++]);
        }
    }
    buf_free(&out);
    size_t start = 0, end = dec.len;
    while (start < end && isspace((unsigned char)dec.data[start])) {
        start++;
    }
    while (end > start && isspace((unsigned char)dec.data[end - 1])) {
        end--;
    }
    char *r = xstrndup(dec.data + start, end - start);
    buf_free(&dec);
    return r;
}

char *slack_escape(const char *text, size_t max)
{
    struct buf out;
    buf_init(&out, 0);
    buf_puts(&out, "");
    for (const char *p = text ? text : ""; *p; p++) {
        const char *piece = *p == '&' ? "&amp;" : *p == '<' ? "&lt;" : *p == '>' ? "&gt;" : NULL;
        size_t n = piece ? strlen(piece) : 1;
        if (out.len + n > max) {
            break; /* never half an entity */
        }
        if (piece) {
            buf_puts(&out, piece);
        } else {
            buf_putc(&out, *p);
        }
    }
    /* Entities are ASCII, so a cut between pieces can only split a UTF-8 sequence. */
    out.len = util_utf8_complete_prefix(out.data, out.len);
    out.data[out.len] = 0;
    size_t len;
    return buf_detach(&out, &len);
}

/* Lowercase s into a new string where every run of non-alphanumerics is one space, with a
 * space at both ends, so " word " and " two words " match on word boundaries. */
char *sl_normalize(const char *s)
{
    struct buf b;
    buf_init(&b, 0);
    buf_putc(&b, ' ');
    int space = 1;
    for (const char *p = s ? s : ""; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) || c >= 0x80) {
            buf_putc(&b, (char)tolower(c));
            space = 0;
        } else if (!space) {
            buf_putc(&b, ' ');
            space = 1;
        }
    }
    if (!space) {
        buf_putc(&b, ' ');
    }
    size_t n;
    return buf_detach(&b, &n);
}

/* 1 if the normalized phrase (" a b ") occurs in the normalized text. */
static int has_phrase(const char *text, const char *phrase)
{
    return phrase[0] && phrase[1] && strstr(text, phrase) != NULL;
}

static const char *const stopwords[] = {
    "the", "and",  "for",  "with", "that",       "this", "from",    "into",   "your",
    "our", "are",  "was",  "not",  "but",        "can",  "all",     "any",    "its",
    "has", "have", "will", "repo", "repository", "code", "service", "please", "fix",
    "add", "make", "used", "uses", "using",      NULL};

static int is_stop(const char *w, size_t n)
{
    if (n < 4) {
        return 1;
    }
    for (int i = 0; stopwords[i]; i++) {
        if (strlen(stopwords[i]) == n && memcmp(stopwords[i], w, n) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * The score of one repository. Weights: an explicit name in the message wins (+10), the name
 * in the channel (+6) or thread (+4); each hint in the message (+5), channel name (+4) or
 * thread (+2); each distinct description word of 4+ letters (not a stop word) in the message
 * (+1) or thread (+1, capped at 3 per repository for the thread). Everything is computed on
 * normalized text, so the result does not depend on case or punctuation.
 */
static int score_one(const struct slack_repo *r, const char *chan, const char *thread,
                     const char *msg)
{
    int score = 0;
    char *name = sl_normalize(r->name);
    /* "org/name" -> also try the last path part. */
    const char *slash = r->name ? strrchr(r->name, '/') : NULL;
    char *base = slash ? sl_normalize(slash + 1) : NULL;
    if (has_phrase(msg, name) || (base && has_phrase(msg, base))) {
        score += 10;
    }
    if (has_phrase(chan, name) || (base && has_phrase(chan, base))) {
        score += 6;
    }
    if (has_phrase(thread, name) || (base && has_phrase(thread, base))) {
        score += 4;
    }
    free(name);
    free(base);
    for (size_t i = 0; i < r->nhints; i++) {
        char *h = sl_normalize(r->hints[i]);
        if (has_phrase(chan, h)) {
            score += 4;
        }
        if (has_phrase(msg, h)) {
            score += 5;
        }
        if (has_phrase(thread, h)) {
            score += 2;
        }
        free(h);
    }
    if (r->description) {
        char *d = sl_normalize(r->description);
        int thread_hits = 0;
        /* Walk the distinct words of the description. */
        for (char *w = d + 1; *w;) {
            char *e = strchr(w, ' ');
            if (!e) {
                break;
            }
            size_t n = (size_t)(e - w);
            int seen = 0;
            for (char *q = d + 1; q < w; q++) {
                if ((q == d + 1 || q[-1] == ' ') && strncmp(q, w, n) == 0 && q[n] == ' ') {
                    seen = 1;
                    break;
                }
            }
            if (!seen && !is_stop(w, n)) {
                char pat[80];
                if (n + 3 <= sizeof(pat)) {
                    pat[0] = ' ';
                    memcpy(pat + 1, w, n);
                    pat[n + 1] = ' ';
                    pat[n + 2] = 0;
                    if (strstr(msg, pat)) {
                        score += 1;
                    }
                    if (thread_hits < 3 && strstr(thread, pat)) {
                        score += 1;
                        thread_hits++;
                    }
                }
            }
            w = e + 1;
        }
        free(d);
    }
    return score;
}

int slack_pick_repo(const struct slack_repo *repos, size_t n, const char *channel_name,
                    const char *thread_text, const char *message, int *scores)
{
    char *chan = sl_normalize(channel_name);
    char *thread = sl_normalize(thread_text);
    char *msg = sl_normalize(message);
    int best = -1, best_score = 0, tie = 0;
    for (size_t i = 0; i < n; i++) {
        int s = score_one(&repos[i], chan, thread, msg);
        if (scores) {
            scores[i] = s;
        }
        if (s > best_score) {
            best = (int)i;
            best_score = s;
            tie = 0;
        } else if (s == best_score && s > 0) {
            tie = 1;
        }
    }
    free(chan);
    free(thread);
    free(msg);
    return tie ? -1 : best;
}

/* What Slack calls the end of a prompt ("Done" for completed and anything else). */
const char *sl_state_verb(enum prompt_state state)
{
    return state == PROMPT_FAILED ? "Failed" : state == PROMPT_CANCELLED ? "Cancelled" : "Done";
}

json_t *slack_result_blocks(const char *repo, enum prompt_state state, const char *summary,
                            const char *pr_url, const char *session_url)
{
    const char *icon = ":white_check_mark:";
    const char *verb = sl_state_verb(state);
    if (state == PROMPT_FAILED) {
        icon = ":x:";
    } else if (state == PROMPT_CANCELLED) {
        icon = ":no_entry_sign:";
    }
    json_t *blocks = json_array();
    char *erepo = slack_escape(repo ? repo : "session", 200);
    char *head = xasprintf("%s *%s* in `%s`", icon, verb, erepo);
    free(erepo);
    json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s}}", "type", "section", "text",
                                            "type", "mrkdwn", "text", head));
    free(head);
    if (summary && *summary) {
        /* The summary is the agent's output: escaped, so <!channel>, <@U…> and <url|label>
         * in it are shown as text, never pinged or linked. */
        char *s = slack_escape(summary, MAX_SUMMARY);
        json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s}}", "type", "section", "text",
                                                "type", "mrkdwn", "text", s));
        free(s);
    }
    json_t *elements = json_array();
    if (pr_url && *pr_url) {
        json_array_append_new(elements,
                              json_pack("{s:s, s:{s:s, s:s}, s:s, s:s}", "type", "button", "text",
                                        "type", "plain_text", "text", "Open pull request", "url",
                                        pr_url, "action_id", "open_pr"));
    }
    if (session_url && *session_url) {
        json_array_append_new(elements,
                              json_pack("{s:s, s:{s:s, s:s}, s:s, s:s}", "type", "button", "text",
                                        "type", "plain_text", "text", "Open session", "url",
                                        session_url, "action_id", "open_session"));
    }
    if (json_array_size(elements)) {
        json_array_append_new(blocks,
                              json_pack("{s:s, s:o}", "type", "actions", "elements", elements));
    } else {
        json_decref(elements);
    }
    return blocks;
}
