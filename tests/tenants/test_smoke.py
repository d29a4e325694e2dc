from http import HTTPStatus

from tests.factories import PASSWORD


def test_owner_signs_in_and_lands_on_their_clinic_dashboard(client, owner, clinic):
    response = client.post("/accounts/login/", {"username": owner.email, "password": PASSWORD})

    assert response.status_code == HTTPStatus.FOUND
    dashboard = client.get(client.get(response["Location"])["Location"])
    assert dashboard.status_code == HTTPStatus.OK
    assert b"Clinic A" in dashboard.content


def test_outsider_gets_404_for_another_clinic(client, outsider, clinic):
    client.force_login(outsider)

    response = client.get(f"/c/{clinic.slug}/")

    assert response.status_code == HTTPStatus.NOT_FOUND
