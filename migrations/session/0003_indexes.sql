-- Version 3: paging messages by seq without a scan; pruning old idempotency records by age.
CREATE INDEX messages_seq ON messages(seq);
CREATE INDEX requests_created ON requests(created_at);
