"""Source-level quality: does tau(q, s) predict removing publisher s (digits publishers, Brown genres)?"""
