"""The dashboard's pages: each a Streamlit script that ``app.py`` lists (not named
``pages/``, which Streamlit would also list on its own)."""
