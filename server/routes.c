/*
 * routes.c - the route table: one line per endpoint (see api.h for patterns and flags).
 * Every engineer adds their endpoints here, one line each, in the section of their issue.
 * Order matters only between overlapping patterns: the first match wins, so keep catch-all
 * patterns ({*path}) last.
 */
#include "server/api/api.h"
#include "server/api/api_audit.h"
#include "server/api/api_repos.h"
#include "server/api/api_agents.h"
#include "server/api/api_sandbox.h"
#include "server/api/api_secrets.h"
#include "server/api/api_diff.h"
#include "server/slack/slack.h"
#include "server/api/api_github.h"
#include "server/static.h"
#include "server/api/api_metrics.h"

#include <stddef.h>

const struct route http_routes[] = {
    /* ---- core ---- */
    {"GET", "/healthz", api_healthz, ROUTE_PUBLIC},
    {"GET", "/metrics", api_metrics, ROUTE_PUBLIC},
    {"GET", "/v1/me", api_me, 0},
    {"POST", "/v1/tokens", api_tokens_create, 0},
    {"GET", "/v1/tokens", api_tokens_list, 0},
    {"DELETE", "/v1/tokens/{id}", api_tokens_delete, 0},
    {"GET", "/v1/agents", api_agents_list, 0},
    {"POST", "/v1/sessions", api_sessions_create, 0},
    {"GET", "/v1/sessions", api_sessions_list, 0},
    {"GET", "/v1/sessions/{id}", api_session_get, 0},
    {"DELETE", "/v1/sessions/{id}", api_session_delete, 0},
    {"POST", "/v1/sessions/{id}/participants", api_session_participants_add, 0},
    {"GET", "/v1/sessions/{id}/participants", api_session_participants_list, 0},
    {"DELETE", "/v1/sessions/{id}/participants/{user}", api_session_participant_remove, 0},
    {"GET", "/v1/audit", api_audit_list, 0},
    {"GET", "/v1/sessions/{id}/export", api_session_export, 0},
    {"POST", "/v1/sessions/{id}/messages", api_messages_post, 0},
    {"GET", "/v1/sessions/{id}/messages", api_messages_list, 0},
    {"GET", "/v1/sessions/{id}/events", api_events_list, 0},
    {"POST", "/v1/sessions/{id}/artifacts", api_artifacts_post, ROUTE_ARTIFACT_BODY},
    {"GET", "/v1/sessions/{id}/artifacts", api_artifacts_list, 0},
    {"GET", "/v1/sessions/{id}/artifacts/{aid}", api_artifact_get, 0},

    /* ---- WebSocket hub: upgrades are handed off before routing to fn ---- */
    {"GET", "/v1/sessions/{id}/ws", api_session_ws_plain, ROUTE_PUBLIC | ROUTE_WEBSOCKET},
    {"POST", "/v1/sessions/{id}/ws-ticket", api_session_ws_ticket, 0},

    /* ---- sandbox: exec, files, cancel ---- */
    {"POST", "/v1/sessions/{id}/exec", api_exec, 0},
    {"POST", "/v1/sessions/{id}/exec/{xid}/kill", api_exec_kill, 0},
    {"GET", "/v1/sessions/{id}/files", api_files_get, 0},
    {"PUT", "/v1/sessions/{id}/files", api_files_put, ROUTE_ARTIFACT_BODY | ROUTE_RAW_BODY},
    {"POST", "/v1/sessions/{id}/cancel", api_cancel, 0},

    /* ---- repositories ---- */
    {"POST", "/v1/repos", api_repos_create, 0},
    {"GET", "/v1/repos", api_repos_list, 0},
    {"GET", "/v1/repos/{name}", api_repo_get, 0},
    {"PATCH", "/v1/repos/{name}", api_repo_patch, 0},
    {"DELETE", "/v1/repos/{name}", api_repo_delete, 0},
    {"POST", "/v1/repos/{name}/images", api_repo_images_build, 0},
    {"GET", "/v1/repos/{name}/images", api_repo_images_list, 0},
    {"POST", "/v1/repos/{name}/warm", api_repo_warm, 0},
    {"GET", "/v1/sessions/{id}/diff", api_diff, 0},
    {"GET", "/v1/sessions/{id}/snapshots", api_snapshots_list, 0},
    {"POST", "/v1/sessions/{id}/snapshots", api_snapshots_create, 0},
    {"POST", "/v1/sessions/{id}/rollback", api_rollback, 0},
    {"POST", "/v1/sessions/{id}/push", api_push, 0},
    {"POST", "/v1/sessions/{id}/pull-request", api_pull_request, 0},
    {"GET", "/v1/me/credentials", api_credentials_list, 0},
    {"PUT", "/v1/me/credentials/github", api_credentials_github_put, 0},
    {"DELETE", "/v1/me/credentials/github", api_credentials_github_delete, 0},

    /* ---- secrets (admin) ---- */
    {"GET", "/v1/secrets", api_secrets_list, 0},
    {"PUT", "/v1/secrets/{secret}", api_secrets_put, 0},
    {"DELETE", "/v1/secrets/{secret}", api_secrets_delete, 0},
    {"GET", "/v1/repos/{name}/secrets", api_repo_secrets_list, 0},
    {"PUT", "/v1/repos/{name}/secrets/{secret}", api_repo_secrets_put, 0},
    {"DELETE", "/v1/repos/{name}/secrets/{secret}", api_repo_secrets_delete, 0},

    /* ---- clients: slack, extension, static web UI (keep {*path} last) ---- */
    {"POST", "/v1/slack/events", api_slack_events, ROUTE_PUBLIC | ROUTE_RAW_BODY},
    {"POST", "/v1/github/webhook", api_github_webhook, ROUTE_PUBLIC | ROUTE_RAW_BODY},
    {"GET", "/", api_static, ROUTE_PUBLIC},
    {"GET", "/ui/{*path}", api_static, ROUTE_PUBLIC},

    {NULL, NULL, NULL, 0},
};
