/*
 * egress.c - the egress allow-list forward proxy (see egress.h).
 *
 * Threads: the acceptor thread polls every listener plus a wake-up pipe; each accepted
 * connection is served by its own detached thread, which reads the request head, applies the
 * policy copied from its listener at accept time, resolves, connects and then relays bytes
 * both ways until both sides are done or the idle timeout passes. e->lock guards the
 * listener table, the connection list and the counters. This file is the proxy's life
 * (listeners, acceptor, connection threads); egress_int.h says where the rest is.
 *
 * Invariants: a connection is forwarded only to an address that came out of its own
 * resolution of an allowed host:port pair, and never to a restricted address unless the pair
 * names that address literally. A plain-http request is forwarded with "Connection: close"
 * so the client cannot reuse the upstream connection for another host.
 */
#include "sandbox/egress/egress_int.h"

#include "common/err.h"
#include "common/log.h"
#include "common/xmem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- listeners ---- */

static void listener_free(struct listener *l)
{
    if (!l) {
        return;
    }
    if (l->fd >= 0) {
        close(l->fd);
    }
    if (l->unix_path) {
        unlink(l->unix_path);
    }
    free(l->name);
    free(l->owner);
    free(l->unix_path);
    free(l->allow);
    free(l);
}

static void wake(struct egress *e)
{
    char c = 1;
    ssize_t w = write(e->wake[1], &c, 1);
    (void)w;
}

/* If a listener of l->name exists on the same endpoint (the same socket path, or both TCP),
 * give it l's owner and policy in place and return 1 (l gets the old ones, for the caller to
 * free): its socket stays, so the commands of a sandbox that are using it keep their route
 * (and a TCP listener its port) when another command of the sandbox sets the list anew. New
 * connections get the new policy (accept_one copies it under e->lock); open ones keep theirs. */
static int update_in_place(struct egress *e, struct listener *l, const char *unix_path,
                           int *port_out)
{
    int done = 0;
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < e->nls; i++) {
        struct listener *old = e->ls[i];
        if (strcmp(old->name, l->name) != 0) {
            continue;
        }
        if (unix_path ? old->unix_path && strcmp(old->unix_path, unix_path) == 0
                      : !old->unix_path) {
            struct allow *a = old->allow;
            size_t na = old->nallow;
            char *owner = old->owner;
            old->allow = l->allow;
            old->nallow = l->nallow;
            old->owner = l->owner;
            l->allow = a;
            l->nallow = na;
            l->owner = owner;
            if (port_out && !unix_path) {
                *port_out = old->port;
            }
            done = 1;
        }
        break;
    }
    pthread_mutex_unlock(&e->lock);
    return done;
}

int egress_open(struct egress *e, const char *name, const char *const *allow, const char *unix_path,
                int *port_out)
{
    return egress_open_owned(e, name, name, allow, unix_path, port_out);
}

int egress_open_owned(struct egress *e, const char *name, const char *owner,
                      const char *const *allow, const char *unix_path, int *port_out)
{
    struct listener *l = xcalloc(1, sizeof(*l));
    int rc = 0;
    l->fd = -1;
    l->name = xstrdup(name);
    l->owner = xstrdup(owner ? owner : name);
    for (size_t i = 0; allow && allow[i]; i++) {
        l->nallow++;
    }
    if (l->nallow > MAX_ALLOW) {
        rc = ERR_INVALID;
        goto out;
    }
    l->allow = xcalloc(l->nallow + 1, sizeof(*l->allow));
    for (size_t i = 0; i < l->nallow; i++) {
        if (egri_split_hostport(allow[i], strlen(allow[i]), l->allow[i].host, &l->allow[i].port)) {
            LOG_WARN("egress: %s: malformed allow entry (want host:port)", name);
            rc = ERR_INVALID;
            goto out;
        }
        l->allow[i].literal = egri_is_literal(l->allow[i].host);
    }
    if (update_in_place(e, l, unix_path, port_out)) {
        goto out; /* l now holds the old policy, freed below */
    }
    if (unix_path) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof(sun.sun_path)) {
            rc = ERR_INVALID;
            goto out;
        }
        memcpy(sun.sun_path, unix_path, strlen(unix_path) + 1);
        l->unix_path = xstrdup(unix_path);
        l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        unlink(unix_path);
        if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
            chmod(unix_path, 0666) < 0 || listen(l->fd, 128) < 0) {
            LOG_ERROR("egress: %s: cannot listen on %s: %s", name, unix_path, strerror(errno));
            rc = ERR_IO;
            goto out;
        }
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7F000001)};
        socklen_t sl = sizeof(sin);
        l->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
            listen(l->fd, 128) < 0 || getsockname(l->fd, (struct sockaddr *)&sin, &sl) < 0) {
            LOG_ERROR("egress: %s: cannot listen on loopback: %s", name, strerror(errno));
            rc = ERR_IO;
            goto out;
        }
        l->port = ntohs(sin.sin_port);
        if (port_out) {
            *port_out = l->port;
        }
    }
    pthread_mutex_lock(&e->lock);
    struct listener *old = NULL;
    size_t i;
    for (i = 0; i < e->nls; i++) {
        if (strcmp(e->ls[i]->name, name) == 0) {
            old = e->ls[i];
            break;
        }
    }
    if (old) {
        /* Replacing: the old socket file is ours to remove only if it is another path. */
        if (old->unix_path && unix_path && strcmp(old->unix_path, unix_path) == 0) {
            free(old->unix_path);
            old->unix_path = NULL;
        }
        e->ls[i] = l;
    } else {
        e->ls = xrealloc(e->ls, (e->nls + 1) * sizeof(*e->ls));
        e->ls[e->nls++] = l;
    }
    pthread_mutex_unlock(&e->lock);
    wake(e);
    /* The acceptor may be inside poll() on the old fd: closing it is harmless (poll reports
     * POLLNVAL or nothing, and the table no longer has it). */
    listener_free(old);
    l = NULL;
out:
    listener_free(l);
    return rc;
}

int egress_close(struct egress *e, const char *name)
{
    struct listener *l = NULL;
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < e->nls; i++) {
        if (strcmp(e->ls[i]->name, name) == 0) {
            l = e->ls[i];
            e->ls[i] = e->ls[--e->nls];
            break;
        }
    }
    pthread_mutex_unlock(&e->lock);
    if (!l) {
        return ERR_NOT_FOUND;
    }
    wake(e);
    listener_free(l);
    return 0;
}

int egress_denials(struct egress *e, const char *name, char *last, size_t n)
{
    int count = 0;
    if (last && n) {
        last[0] = '\0';
    }
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < e->nls; i++) {
        if (strcmp(e->ls[i]->name, name) == 0) {
            count = e->ls[i]->denials;
            if (last && n) {
                snprintf(last, n, "%s", e->ls[i]->last);
            }
            break;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return count;
}

/* ---- connection threads ---- */

static void *conn_main(void *arg)
{
    struct job *j = arg;
    struct egress *e = j->e;
    egri_serve(j);
    pthread_mutex_lock(&e->lock);
    for (struct conn **pp = &e->conns; *pp; pp = &(*pp)->next) {
        if (*pp == j->c) {
            *pp = j->c->next;
            break;
        }
    }
    if (j->c->cfd >= 0) {
        close(j->c->cfd);
    }
    if (j->c->ufd >= 0) {
        close(j->c->ufd);
    }
    if (--e->st.active == 0) {
        pthread_cond_broadcast(&e->idle);
    }
    pthread_mutex_unlock(&e->lock);
    free(j->c);
    free(j->allow);
    free(j);
    return NULL;
}

static void accept_one(struct egress *e, int lfd)
{
    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0) {
        return;
    }
    struct job *j = xcalloc(1, sizeof(*j));
    j->e = e;
    j->c = xcalloc(1, sizeof(*j->c));
    j->c->cfd = cfd;
    j->c->ufd = -1;
    pthread_mutex_lock(&e->lock);
    struct listener *l = NULL;
    for (size_t i = 0; i < e->nls; i++) {
        if (e->ls[i]->fd == lfd) {
            l = e->ls[i];
        }
    }
    if (!l || e->stopping) {
        pthread_mutex_unlock(&e->lock);
        close(cfd);
        free(j->c);
        free(j);
        return;
    }
    snprintf(j->name, sizeof(j->name), "%s", l->name);
    snprintf(j->owner, sizeof(j->owner), "%s", l->owner);
    j->nallow = l->nallow;
    j->allow = xcalloc(l->nallow + 1, sizeof(*j->allow));
    memcpy(j->allow, l->allow, l->nallow * sizeof(*j->allow));
    j->c->next = e->conns;
    e->conns = j->c;
    e->st.active++;
    e->st.connections++;
    pthread_mutex_unlock(&e->lock);

    pthread_attr_t at;
    pthread_t t;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    if (pthread_create(&t, &at, conn_main, j) != 0) {
        LOG_ERROR("egress: cannot start a connection thread");
        conn_main(j); /* cleans up (serve on this thread would block the acceptor) */
    }
    pthread_attr_destroy(&at);
}

static void *acceptor_main(void *arg)
{
    struct egress *e = arg;
    struct pollfd *pf = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        if (e->stopping) {
            pthread_mutex_unlock(&e->lock);
            break;
        }
        if (e->nls + 1 > cap) {
            cap = e->nls + 16;
            pf = xrealloc(pf, cap * sizeof(*pf));
        }
        size_t n = 0;
        pf[n++] = (struct pollfd){.fd = e->wake[0], .events = POLLIN};
        for (size_t i = 0; i < e->nls; i++) {
            pf[n++] = (struct pollfd){.fd = e->ls[i]->fd, .events = POLLIN};
        }
        pthread_mutex_unlock(&e->lock);
        int r = poll(pf, (nfds_t)n, -1);
        if (r < 0 && errno != EINTR) {
            break;
        }
        if (r <= 0) {
            continue;
        }
        if (pf[0].revents & POLLIN) {
            char tmp[64];
            while (read(e->wake[0], tmp, sizeof(tmp)) > 0) {
            }
            continue; /* the table changed: rebuild before touching listener fds */
        }
        for (size_t i = 1; i < n; i++) {
            if (pf[i].revents & POLLIN) {
                accept_one(e, pf[i].fd);
            }
        }
    }
    free(pf);
    return NULL;
}

/* Copy and check the operator's host map into e, and say at start what it maps: a mapped
 * name reaches a private address, which an operator should see in the log. */
static int load_hosts(struct egress *e, const struct egress_config *cfg)
{
    e->hosts = xcalloc(cfg->nhosts + 1, sizeof(*e->hosts));
    for (size_t i = 0; i < cfg->nhosts; i++) {
        const struct egress_host *h = &cfg->hosts[i];
        char why[128];
        if (egress_host_check(h->name, h->addr, why, sizeof(why)) != 0 ||
            egri_hostmap_norm(h->name, h->addr, &e->hosts[e->nhosts]) != 0) {
            LOG_ERROR("egress: egress.hosts \"%s\": %s", h->name ? h->name : "", why);
            return ERR_INVALID;
        }
        LOG_INFO("egress: egress.hosts maps %s to %s (for allow-lists that name it)",
                 e->hosts[e->nhosts].host, e->hosts[e->nhosts].addr);
        e->nhosts++;
    }
    return 0;
}

int egress_start(const struct egress_config *cfg, struct egress **out)
{
    struct egress *e = xcalloc(1, sizeof(*e));
    e->cfg = *cfg;
    e->cfg.hosts = NULL; /* borrowed: e->hosts is the copy */
    e->cfg.nhosts = 0;
    if (load_hosts(e, cfg) != 0) {
        free(e->hosts);
        free(e);
        return ERR_INVALID;
    }
    if (e->cfg.connect_timeout_ms <= 0) {
        e->cfg.connect_timeout_ms = 10000;
    }
    if (e->cfg.idle_timeout_ms <= 0) {
        e->cfg.idle_timeout_ms = 600000;
    }
    if (e->cfg.head_timeout_ms <= 0) {
        e->cfg.head_timeout_ms = 10000;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->idle, NULL);
    if (pipe2(e->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(e->hosts);
        free(e);
        return ERR_IO;
    }
    if (pthread_create(&e->acceptor, NULL, acceptor_main, e) != 0) {
        close(e->wake[0]);
        close(e->wake[1]);
        free(e->hosts);
        free(e);
        return ERR_IO;
    }
    *out = e;
    return 0;
}

void egress_stop(struct egress *e)
{
    if (!e) {
        return;
    }
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    pthread_mutex_unlock(&e->lock);
    wake(e);
    pthread_join(e->acceptor, NULL);
    pthread_mutex_lock(&e->lock);
    /* Unblock every connection thread; they close their own descriptors. */
    for (struct conn *c = e->conns; c; c = c->next) {
        if (c->cfd >= 0) {
            shutdown(c->cfd, SHUT_RDWR);
        }
        if (c->ufd >= 0) {
            shutdown(c->ufd, SHUT_RDWR);
        }
    }
    while (e->st.active > 0) {
        pthread_cond_wait(&e->idle, &e->lock);
    }
    pthread_mutex_unlock(&e->lock);
    for (size_t i = 0; i < e->nls; i++) {
        listener_free(e->ls[i]);
    }
    free(e->ls);
    free(e->hosts);
    close(e->wake[0]);
    close(e->wake[1]);
    pthread_cond_destroy(&e->idle);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

void egress_get_stats(struct egress *e, struct egress_stats *out)
{
    pthread_mutex_lock(&e->lock);
    *out = e->st;
    pthread_mutex_unlock(&e->lock);
}
