"""The Streamlit incident dashboard."""
