-- Registry schema, version 3 (issue 7): a repository's egress allow-list and default agent.
-- egress: JSON array of "host:port" the sandboxes of its sessions may reach through the egress
-- proxy, besides the agent's model endpoint. agent: the name of a configured agent used when
-- a session names none ('' = the server default). Owned by sandbox/repos.c.
ALTER TABLE repos ADD COLUMN egress TEXT NOT NULL DEFAULT '[]';
ALTER TABLE repos ADD COLUMN agent TEXT NOT NULL DEFAULT '';
