public enum SessionsModule {}
