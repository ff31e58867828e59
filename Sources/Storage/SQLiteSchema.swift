/// The SQLite schema: PostgreSQL's tables (see `PostgresSchema`) with SQLite types. UUIDs are
/// lowercase TEXT, timestamps INTEGER microseconds since 1970, JSON TEXT.
enum SQLiteSchema {
    typealias Migration = PostgresSchema.Migration

    static let createMigrationsTable = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )
        """

    static let migrations: [Migration] = [
        Migration(version: 1, statements: [
            """
            CREATE TABLE users (
                id TEXT PRIMARY KEY,
                external_id TEXT NOT NULL UNIQUE,
                created_at INTEGER NOT NULL
            )
            """,
            """
            CREATE TABLE conversations (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                title TEXT,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                metadata TEXT NOT NULL DEFAULT '{}'
            )
            """,
            "CREATE INDEX conversations_user_updated ON conversations (user_id, updated_at DESC, id DESC)",
            // Keyed like the partitioned PostgreSQL table, so a retry conflicts the same way.
            """
            CREATE TABLE messages (
                id TEXT NOT NULL,
                conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
                role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
                content TEXT NOT NULL,
                tool_calls TEXT,
                finish_reason TEXT,
                prompt_tokens INTEGER,
                completion_tokens INTEGER,
                model TEXT,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (id, created_at)
            )
            """,
            "CREATE INDEX messages_conversation_created ON messages (conversation_id, created_at, id)",
            """
            CREATE TABLE tool_executions (
                id TEXT PRIMARY KEY,
                message_id TEXT NOT NULL,
                tool_name TEXT NOT NULL,
                input TEXT,
                output TEXT,
                duration_ms INTEGER,
                status TEXT NOT NULL,
                created_at INTEGER NOT NULL
            )
            """,
            "CREATE INDEX tool_executions_tool_created ON tool_executions (tool_name, created_at DESC)",
            """
            CREATE TABLE user_quotas (
                user_id TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
                tokens_used INTEGER NOT NULL DEFAULT 0,
                tokens_limit INTEGER,
                reset_at INTEGER
            )
            """,
        ]),
        // message_id stays NOT NULL here (SQLite cannot drop it): tool runs store ''.
        Migration(version: 2, statements: [
            """
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                user_external_id TEXT NOT NULL,
                priority TEXT NOT NULL,
                state TEXT NOT NULL,
                input TEXT,
                result TEXT,
                result_type TEXT,
                error TEXT,
                attempts INTEGER NOT NULL,
                max_attempts INTEGER NOT NULL,
                schedule TEXT,
                created_at INTEGER NOT NULL,
                started_at INTEGER,
                finished_at INTEGER
            )
            """,
            "CREATE INDEX jobs_user_created ON jobs (user_external_id, created_at DESC)",
            "ALTER TABLE tool_executions ADD COLUMN generation_id TEXT",
            "ALTER TABLE tool_executions ADD COLUMN conversation_id TEXT",
            "ALTER TABLE tool_executions ADD COLUMN user_external_id TEXT",
            "ALTER TABLE tool_executions ADD COLUMN call_id TEXT",
            "CREATE INDEX tool_executions_generation ON tool_executions (generation_id, created_at)",
        ]),
        // What a job spent, and how much of it is already in the submitter's user_quotas.
        Migration(version: 3, statements: [
            "ALTER TABLE jobs ADD COLUMN tokens_used INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN tokens_counted INTEGER NOT NULL DEFAULT 0",
        ]),
        // Usage of generations that store no message, kept by id so that a retry counts once.
        Migration(version: 4, statements: [
            """
            CREATE TABLE usage_records (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                tokens INTEGER NOT NULL CHECK (tokens >= 0),
                created_at INTEGER NOT NULL
            )
            """,
            "CREATE INDEX usage_records_created ON usage_records (created_at)",
        ]),
    ]

    static let messageColumns =
        "id, conversation_id, role, content, finish_reason, prompt_tokens, completion_tokens, model, created_at"
}
